package kernels

import (
	"strings"
	"testing"
)

func TestPrintPresence(t *testing.T) {
	var b strings.Builder
	PrintPresence(&b, []string{"rtt", "rcv_wnd", "rehash"}, []Presence{
		{Column: "host ebpf", Known: true},
		{Column: "6.1 ebpf", Absent: []string{"rehash"}, Known: true},
		{Column: "6.1 tcp_info", Absent: []string{"rcv_wnd", "rehash"}, Known: true},
		{Column: "5.10 ebpf"},
	})
	want := `tcp_info member  host ebpf  6.1 ebpf  6.1 tcp_info  5.10 ebpf
rtt              yes        yes       yes           ?
rcv_wnd          yes        yes       -             ?
rehash           yes        -         -             ?
provided         3 of 3     2 of 3    1 of 3        ?
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

func TestPresenceOfDisagreement(t *testing.T) {
	c := &Console{Steps: []*StepResult{
		{Name: "ebpf", Absent: map[string][]string{absentOnKernel: {"rehash"}}},
		{Name: "checks", Absent: map[string][]string{absentInJSON: {"rehash", "total_rto"}}},
	}}
	e, ti, problems := PresenceOf("k", c)
	if !e.Known || len(e.Absent) != 1 || ti.Known {
		t.Errorf("ebpf %+v tcp_info %+v", e, ti)
	}
	if len(problems) != 1 || !strings.Contains(problems[0], "from the JSON record") {
		t.Errorf("problems %q", problems)
	}
}

func TestPrintChecks(t *testing.T) {
	c := &Console{Steps: []*StepResult{{Name: "ebpf", Tests: []TestResult{{Name: "TestA", Status: "PASS"}}}}}
	var b strings.Builder
	PrintChecks(&b, []Check{{Step: "ebpf", Test: "TestA", What: "a"}, {Step: "ebpf", Test: "TestB", What: "b"}}, []string{"6.1"}, []*Console{c})
	want := `check  test        6.1
a      ebpf TestA  PASS
b      ebpf TestB  not run
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}
