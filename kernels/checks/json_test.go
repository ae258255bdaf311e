package checks_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/flowd/flowd/backends/ebpf"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/sink"
)

// TestJSONPresence records a real flow with the ebpf backend and checks
// that every JSON record's tcp_info holds exactly the members the record
// has: a member this kernel cannot provide is left out, not printed as 0.
// With ebpf's TestPresenceMatchesKernel (record against the kernel's
// tcp_sock BTF) this ties the JSON output to the running kernel. State
// records (poll mode) have no tcp_info at all.
func TestJSONPresence(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testutil.TempCgroup(t)
	b, err := ebpf.New(ebpf.Config{Cgroup: cg, Interval: 0, FlushInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	col := testutil.Run(t, b)
	ln := testutil.Listen(t, cg, "tcp4", "127.0.0.1:0")
	p := testutil.Dial(t, cg, ln)
	cookie := testutil.Cookie(t, p.Client)
	p.Send(t, 1<<20)
	p.Client.Close()
	testutil.WaitFor(t, "the close record", 5*time.Second, func() bool {
		return len(col.Find(cookie, flow.EventClose)) == 1
	})

	recs := col.Records(cookie)
	var (
		absent []string
		first  = true
	)
	for i, r := range recs {
		line := sink.AppendJSON(nil, &r)
		var obj struct {
			TCPInfo map[string]json.RawMessage `json:"tcp_info"`
		}
		if err := json.Unmarshal(line, &obj); err != nil {
			t.Fatalf("record %d is not JSON: %v\n%s", i, err, line)
		}
		if r.Event == flow.EventState {
			if obj.TCPInfo != nil || !r.Info.Present.IsEmpty() {
				t.Errorf("state record with tcp_info: %s", line)
			}
			continue
		}
		known := map[string]bool{}
		var missing []string
		for f := flow.Field(0); f < flow.NumFields; f++ {
			known[f.Name()] = true
			_, inJSON := obj.TCPInfo[f.Name()]
			if inJSON != r.Info.Has(f) {
				t.Errorf("%s record: %s in JSON = %v, present in the record = %v", r.Event, f, inJSON, r.Info.Has(f))
			}
			if !inJSON {
				missing = append(missing, f.Name())
			}
		}
		for k := range obj.TCPInfo {
			if !known[k] {
				t.Errorf("%s record: unknown tcp_info member %q in JSON", r.Event, k)
			}
		}
		if first {
			absent, first = missing, false
		} else if len(missing) != len(absent) {
			t.Errorf("%s record lacks %v, the first record %v", r.Event, missing, absent)
		}
	}
	if len(recs) < 3 {
		t.Fatalf("only %d records of the flow", len(recs))
	}
	t.Logf("members absent from the JSON record: %v", absent)
}
