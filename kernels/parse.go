package kernels

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"
)

// Console is what a guest's serial console says, parsed.
type Console struct {
	Kernel  string   // the release the guest booted, "" when it never said
	Modules []string // module lines that report a failure
	Errors  []string // the guest's own setup errors
	Steps   []*StepResult
	Done    bool // the guest reached the end of its plan
}

// StepResult is the parsed output of one step: a test binary run through
// test2json.
type StepResult struct {
	Name     string
	Ended    bool // its end marker was seen
	Exit     int
	Duration time.Duration
	Tests    []TestResult // in the order they finished
	// Absent holds the lists of "members absent ..." that tests logged,
	// keyed by what the test said they are absent from or on.
	Absent map[string][]string
	Lines  []string // everything it printed: the tests' output, and lines that were no event
}

// TestResult is one test's result.
type TestResult struct {
	Name     string // "TestModes/poll_200ms"
	Status   string // PASS, FAIL or SKIP
	Duration time.Duration
	Output   []string // what it logged, without go test's === and --- lines
}

// Depth is 0 for a top-level test, 1 for its subtests and so on.
func (t TestResult) Depth() int { return strings.Count(t.Name, "/") }

// event is a line of test2json's output (go doc test2json).
type event struct {
	Action  string
	Test    string
	Elapsed float64 // seconds
	Output  string
}

var absentRE = regexp.MustCompile(`members absent (.+?): \[(.*)\]\s*$`)

// ParseConsole reads a guest's console output.
func ParseConsole(r io.Reader) (*Console, error) {
	c := &Console{}
	var cur *StepResult
	output := map[string][]string{} // of the tests of cur, by name
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 64<<10), 4<<20)
	for s.Scan() {
		line := strings.TrimRight(s.Text(), "\r")
		if i := strings.Index(line, markerPrefix); i >= 0 {
			m := line[i:]
			switch {
			case strings.HasPrefix(m, markerBoot+" kernel="):
				c.Kernel = strings.TrimSpace(strings.TrimPrefix(m, markerBoot+" kernel="))
			case strings.HasPrefix(m, markerModule+" "):
				if strings.Contains(m, " failed: ") {
					c.Modules = append(c.Modules, strings.TrimPrefix(m, markerModule+" "))
				}
			case strings.HasPrefix(m, markerError+" "):
				c.Errors = append(c.Errors, strings.TrimPrefix(m, markerError+" "))
			case strings.HasPrefix(m, markerBegin+" "):
				cur = &StepResult{Name: strings.TrimSpace(strings.TrimPrefix(m, markerBegin+" ")), Absent: map[string][]string{}}
				c.Steps = append(c.Steps, cur)
				output = map[string][]string{}
			case strings.HasPrefix(m, markerEnd+" "):
				name, exit, d, err := parseEnd(strings.TrimPrefix(m, markerEnd+" "))
				if err != nil {
					return c, err
				}
				if cur == nil || cur.Name != name {
					return c, fmt.Errorf("end marker of step %q outside it", name)
				}
				cur.Ended, cur.Exit, cur.Duration = true, exit, d
				cur = nil
			case m == markerDone:
				c.Done = true
			}
			continue
		}
		if cur == nil {
			continue
		}
		// A line that is no event is the kernel's, or a test binary's that
		// test2json could not frame (a crash).
		var e event
		if !strings.HasPrefix(line, "{") || json.Unmarshal([]byte(line), &e) != nil {
			cur.Lines = append(cur.Lines, line)
			continue
		}
		switch e.Action {
		case "output":
			out := strings.TrimSuffix(e.Output, "\n")
			cur.Lines = append(cur.Lines, out)
			if m := absentRE.FindStringSubmatch(out); m != nil {
				cur.Absent[m[1]] = strings.Fields(m[2])
			}
			if t := strings.TrimSpace(out); e.Test != "" && !strings.HasPrefix(t, "=== ") && !strings.HasPrefix(t, "--- ") {
				output[e.Test] = append(output[e.Test], out)
			}
		case "pass", "fail", "skip":
			if e.Test != "" {
				d := time.Duration(e.Elapsed * float64(time.Second)).Round(time.Millisecond)
				cur.Tests = append(cur.Tests, TestResult{Name: e.Test, Status: strings.ToUpper(e.Action), Duration: d, Output: output[e.Test]})
			}
		}
	}
	return c, s.Err()
}

// Expect says what a guest run must show to pass.
type Expect struct {
	Steps []string // every step must end, exit 0 and pass at least one test
	// Required tests must PASS in their step: they are the checks the
	// kernel matrix exists for, so filtering them out is a failure.
	Required map[string][]string
	// AllowSkip matches the tests that may skip; any other skip fails,
	// since a privileged test that skips in the guest proves nothing.
	AllowSkip *regexp.Regexp
	// Filtered: the tests were selected by hand (-run), so a step may pass
	// no test and required checks may not run; at least one test must pass.
	Filtered bool
}

// Problems lists why the run does not pass; none means it passes.
func (c *Console) Problems(e Expect) []string {
	var p []string
	if c.Kernel == "" {
		p = append(p, "the guest never booted to /init (no boot marker)")
	}
	for _, m := range c.Modules {
		p = append(p, "module "+m)
	}
	for _, err := range c.Errors {
		p = append(p, "guest: "+err)
	}
	steps := map[string]*StepResult{}
	passedAll := 0
	for _, s := range c.Steps {
		steps[s.Name] = s
		for _, t := range s.Tests {
			if t.Status == "PASS" {
				passedAll++
			}
		}
	}
	if passedAll == 0 {
		p = append(p, "no test passed")
	}
	for _, name := range e.Steps {
		s := steps[name]
		switch {
		case s == nil:
			p = append(p, fmt.Sprintf("step %s never started", name))
			continue
		case !s.Ended:
			p = append(p, fmt.Sprintf("step %s never ended (hung or the guest died)", name))
		case s.Exit != 0:
			p = append(p, fmt.Sprintf("step %s exited with status %d", name, s.Exit))
		}
		passed := 0
		for _, t := range s.Tests {
			switch {
			case t.Status == "PASS":
				passed++
			case t.Status == "FAIL":
				p = append(p, fmt.Sprintf("%s: %s failed", name, t.Name))
			case t.Status == "SKIP" && (e.AllowSkip == nil || !e.AllowSkip.MatchString(t.Name)):
				p = append(p, fmt.Sprintf("%s: %s skipped: %s", name, t.Name, skipReason(t)))
			}
		}
		if passed == 0 && !e.Filtered {
			p = append(p, fmt.Sprintf("step %s passed no test", name))
		}
		if e.Filtered {
			continue
		}
		for _, req := range e.Required[name] {
			if st := s.status(req); st != "PASS" {
				if st == "" {
					st = "not run"
				}
				p = append(p, fmt.Sprintf("%s: required check %s: %s", name, req, st))
			}
		}
	}
	if !c.Done {
		p = append(p, "the guest did not reach the end of its plan")
	}
	return p
}

func (s *StepResult) status(test string) string {
	for _, t := range s.Tests {
		if t.Name == test {
			return t.Status
		}
	}
	return ""
}

func skipReason(t TestResult) string {
	if len(t.Output) == 0 {
		return "no reason given"
	}
	return strings.TrimSpace(t.Output[len(t.Output)-1])
}
