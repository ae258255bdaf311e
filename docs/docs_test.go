// Package docs holds flowd's user documentation; its test keeps the
// reference tables true to the code and the links between pages whole.
package docs

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"go.yaml.in/yaml/v3"

	"github.com/flowd/flowd/flow"
)

// tableRows returns the cells of the rows of the first markdown table
// after the heading line head in file (relative to the repository root),
// without its header and separator.
func tableRows(t *testing.T, file, head string) [][]string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", file))
	if err != nil {
		t.Fatal(err)
	}
	_, after, ok := strings.Cut("\n"+string(b), "\n"+head+"\n")
	if !ok {
		t.Fatalf("%s has no heading %q", file, head)
	}
	var rows [][]string
	inTable := false
	for _, line := range strings.Split(after, "\n") {
		if !strings.HasPrefix(line, "|") {
			if inTable {
				break
			}
			continue
		}
		inTable = true
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		rows = append(rows, cells)
	}
	if len(rows) < 2 {
		t.Fatalf("%s: no table under %q", file, head)
	}
	return rows[2:]
}

var codeSpan = regexp.MustCompile("`([^`]*)`")

// firstCode returns the text of the first code span of s.
func firstCode(t *testing.T, s string) string {
	t.Helper()
	m := codeSpan.FindStringSubmatch(s)
	if m == nil {
		t.Fatalf("%q holds no code span", s)
	}
	return m[1]
}

// TestConfigurationKeys checks the key table of docs/configuration.md
// against configs/flowd.yaml, which another test keeps equal to the
// built-in defaults: the same keys, their environment variables, and
// defaults that read as the same YAML values.
func TestConfigurationKeys(t *testing.T) {
	b, err := os.ReadFile("../configs/flowd.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var file map[string]any
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	defaults := map[string]any{}
	var flatten func(prefix string, m map[string]any)
	flatten = func(prefix string, m map[string]any) {
		for k, v := range m {
			// A section holds keys; a mapping value (output.otlp.headers)
			// is one key's.
			if sec, ok := v.(map[string]any); ok && len(sec) > 0 {
				flatten(prefix+k+".", sec)
			} else {
				defaults[prefix+k] = v
			}
		}
	}
	flatten("", file)

	documented := map[string]bool{}
	for _, row := range tableRows(t, "docs/configuration.md", "## Keys") {
		if len(row) != 5 {
			t.Fatalf("row %q: want 5 cells", row)
		}
		key := firstCode(t, row[0])
		documented[key] = true
		def, ok := defaults[key]
		if !ok {
			t.Errorf("docs/configuration.md documents %s, which configs/flowd.yaml does not set", key)
			continue
		}
		env := "FLOWD_" + strings.ToUpper(strings.NewReplacer(".", "_", "-", "_").Replace(key))
		if got := firstCode(t, row[4]); got != env {
			t.Errorf("%s: environment variable %s, want %s", key, got, env)
		}
		var docDef any
		if err := yaml.Unmarshal([]byte(firstCode(t, row[3])), &docDef); err != nil {
			t.Errorf("%s: default %q is not YAML: %v", key, row[3], err)
			continue
		}
		if !reflect.DeepEqual(docDef, def) {
			t.Errorf("%s: documented default %#v, configs/flowd.yaml has %#v", key, docDef, def)
		}
	}
	for key := range defaults {
		if !documented[key] {
			t.Errorf("configs/flowd.yaml sets %s, which docs/configuration.md does not document", key)
		}
	}
}

// TestSchemaMembers checks that docs/schema.md lists every tcp_info
// member, in the order of the records, with the unit flow gives it.
func TestSchemaMembers(t *testing.T) {
	rows := tableRows(t, "docs/schema.md", "## `tcp_info` members")
	var got, want []string
	for _, row := range rows {
		got = append(got, firstCode(t, row[0])+": "+row[1])
	}
	for f := range flow.NumFields {
		want = append(want, f.Name()+": "+f.Unit())
	}
	if !slices.Equal(got, want) {
		t.Errorf("docs/schema.md members:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// TestLinks checks that every relative link of README.md and docs/*.md
// points to a file that exists and, with a #fragment, to a heading in it.
func TestLinks(t *testing.T) {
	pages, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, "../README.md")
	checked := 0
	for _, page := range pages {
		b, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range mdLink.FindAllStringSubmatch(string(b), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			path, frag, _ := strings.Cut(target, "#")
			file := page
			if path != "" {
				file = filepath.Join(filepath.Dir(page), path)
			}
			if _, err := os.Stat(file); err != nil {
				t.Errorf("%s: link %s: %v", page, target, err)
				continue
			}
			checked++
			if frag != "" && !slices.Contains(anchors(t, file), frag) {
				t.Errorf("%s: link %s: no heading #%s in %s", page, target, frag, file)
			}
		}
	}
	if checked == 0 {
		t.Error("no links checked")
	}
}

// anchors returns the GitHub anchors of the headings of a markdown file.
func anchors(t *testing.T, file string) []string {
	t.Helper()
	if !strings.HasSuffix(file, ".md") {
		return nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	inCode := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		if inCode || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var a strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case r == ' ':
				a.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				a.WriteRune(r)
			}
		}
		out = append(out, a.String())
	}
	return out
}
