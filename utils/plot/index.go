package main

import (
	"bytes"
	"html/template"
	"math"
	"os"
	"strconv"

	"github.com/flowd/flowd/utils/flows"
	"github.com/flowd/flowd/utils/report"
)

// streamPage is one stream's section of index.html.
type streamPage struct {
	N      int
	Stream report.Stream
	Plots  []plotFile
	Checks []report.Check
}

var scenarioTemplate = template.Must(template.New("scenario").Funcs(template.FuncMap{
	"verdict": func(pass bool) string {
		if pass {
			return "pass"
		}
		return "FAIL"
	},
	"num": num,
}).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>flowd validation: {{.Report.Scenario}}</title>
` + pageStyle + `
</head>
<body>
<h1>{{.Report.Scenario}}: <span class="{{verdict .Report.Pass}}">{{verdict .Report.Pass}}</span></h1>
<p>{{.Report.Description}}</p>
<p>Kernel {{.Report.Kernel}}, started {{.Report.Started.Format "2006-01-02 15:04:05 MST"}}, flowd sampling interval {{.Report.Interval}}.
Time 0 of every plot is when flowd saw the stream's flow open; iperf3's intervals are placed from there.</p>
<table>
<tr><th>stream</th><th>sender (local-&gt;remote)</th><th>cookie</th><th>iperf3 socket</th><th>eBPF records</th><th>netlink records</th></tr>
{{range .Streams}}<tr><td><a href="#s{{.N}}">{{.N}}</a></td><td>{{.Stream.Name}}</td><td class="num">{{.Stream.Cookie}}</td><td class="num">{{.Stream.IperfSocket}}</td><td class="num">{{.Stream.EBPFRecords}}</td><td class="num">{{.Stream.NetlinkRecord}}</td></tr>
{{end}}</table>
{{range .Streams}}
<h2 id="s{{.N}}">Stream {{.N}}: {{.Stream.Name}}</h2>
{{template "checks" .Checks}}
{{range .Plots}}<figure><img src="{{.SVG}}" alt="{{.Title}}"><figcaption>{{.Title}} (<a href="{{.PNG}}">PNG</a>)</figcaption></figure>
{{end}}{{end}}
{{with .Other}}<h2>Other checks</h2>
{{template "checks" .}}{{end}}
</body>
</html>
{{define "checks"}}<table>
<tr><th>metric</th><th>compared</th><th>flowd</th><th>reference</th><th>diff</th><th>tolerance</th><th>rule</th><th>samples</th><th>result</th></tr>
{{range .}}<tr class="{{verdict .Pass}}"><td>{{.Metric}}</td><td>{{.Compared}}</td><td class="num">{{num .Value}}</td><td class="num">{{num .Reference}}</td><td class="num">{{num .Diff}}</td><td class="num">{{num .Tolerance}}</td><td>{{.Rule}}</td><td class="num">{{if .Samples}}{{.Samples}}{{end}}</td><td class="{{verdict .Pass}}">{{verdict .Pass}}</td></tr>
{{end}}</table>{{end}}
`))

// num formats a report value: large ones whole, small ones to 4 digits.
func num(v float64) string {
	if math.Abs(v) >= 1e4 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

// writeScenarioIndex writes a scenario's index.html: the report's checks,
// grouped by stream, and the streams' plots.
func writeScenarioIndex(path string, r *report.Report, pages []streamPage) error {
	var other []report.Check
	for _, c := range r.Checks {
		matched := false
		for i := range pages {
			if pages[i].Stream.Name == c.Stream {
				pages[i].Checks = append(pages[i].Checks, c)
				matched = true
				break
			}
		}
		if !matched {
			other = append(other, c)
		}
	}
	data := struct {
		Report  *report.Report
		Streams []streamPage
		Other   []report.Check
	}{r, pages, other}
	return writeTemplate(path, scenarioTemplate, data)
}

func writeTemplate(path string, t *template.Template, data any) error {
	var b bytes.Buffer
	if err := t.Execute(&b, data); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// pageStyle is the style sheet of every page.
const pageStyle = `<style>
body { font-family: sans-serif; margin: 1.5em; max-width: 1300px; }
table { border-collapse: collapse; font-size: 90%; margin: 0.5em 0 1em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #eee; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.FAIL td { background: #fdd; }
.pass { color: #060; }
.FAIL { color: #b00; font-weight: bold; }
figure { margin: 1em 0; }
img { width: 100%; max-width: 1200px; border: 1px solid #ddd; }
</style>`

// summaryTable is a table of flow summaries with the columns of
// flowd flows; a row links to its flow's page when .Link is set.
const summaryTable = `{{define "summaries"}}<table>
<tr>{{range columns}}<th>{{.}}</th>{{end}}<th>plots</th></tr>
{{range .}}<tr>{{range .Cells}}<td>{{.}}</td>{{end}}<td>{{if .Link}}<a href="{{.Link}}">plots</a>{{end}}</td></tr>
{{end}}</table>{{end}}`

// summaryRow is one row of summaryTable.
type summaryRow struct {
	Cells []string
	Link  string
}

func summaryRows(sums []flows.Summary, sameDay bool, link string) []summaryRow {
	rows := make([]summaryRow, len(sums))
	for i := range sums {
		rows[i] = summaryRow{Cells: sums[i].Row(sameDay), Link: link}
	}
	return rows
}

var funcs = template.FuncMap{"columns": func() []string { return flows.Columns }}

var outputTemplate = template.Must(template.New("output").Funcs(funcs).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>flowd: {{len .Flows}} flows</title>
` + pageStyle + `
</head>
<body>
<h1>flowd: the {{len .Flows}} busiest of {{.Total}} flows</h1>
<p>Read from {{range $i, $s := .Sources}}{{if $i}}, {{end}}{{$s}}{{end}}.
One row per flow and backend that recorded it; the flows are ordered by bytes moved.
Times are UTC; rates are means between the first and last readings; LIMITED BY is the verdict of flowd flows
and the share of the flow's time of its cause.{{if gt .Total (len .Flows)}}
{{.Total}} flows were selected; flowd flows lists them all.{{end}}</p>
{{template "summaries" .Rows}}
</body>
</html>
` + summaryTable))

// writeOutputIndex writes index.html of a plot of flowd's output: the
// drawn flows' summaries, each linking to its page.
func writeOutputIndex(path string, sources []string, drawn []*drawnFlow, total int) error {
	var all []flows.Summary
	for _, d := range drawn {
		all = append(all, d.Summaries...)
	}
	sameDay := flows.SameDay(all)
	var rows []summaryRow
	for _, d := range drawn {
		rows = append(rows, summaryRows(d.Summaries, sameDay, d.Dir+"/index.html")...)
	}
	return writeTemplate(path, outputTemplate, struct {
		Sources []string
		Flows   []*drawnFlow
		Total   int
		Rows    []summaryRow
	}{sources, drawn, total, rows})
}

var flowTemplate = template.Must(template.New("flow").Funcs(funcs).Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>flowd: flow {{.Flow.Cookie}}</title>
` + pageStyle + `
</head>
<body>
<p><a href="../index.html">all flows</a></p>
<h1>Flow {{.Flow.Cookie}}</h1>
{{template "summaries" .Rows}}
{{range .Flow.Plots}}<figure><img src="{{.SVG}}" alt="{{.Title}}"><figcaption>{{.Title}} (<a href="{{.PNG}}">PNG</a>, <a href="{{.SVG}}">SVG</a>)</figcaption></figure>
{{end}}
</body>
</html>
` + summaryTable))

// writeFlowPage writes the page of one flow: its summaries and plots.
func writeFlowPage(path string, d *drawnFlow) error {
	return writeTemplate(path, flowTemplate, struct {
		Flow *drawnFlow
		Rows []summaryRow
	}{d, summaryRows(d.Summaries, false, "")})
}
