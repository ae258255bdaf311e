package backends_test

import (
	"testing"
	"time"

	"github.com/flowd/flowd/backends/ebpf"
	"github.com/flowd/flowd/backends/netlink"
	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
)

// TestBackendsAgree records one flow with both backends and checks that
// they join on the cookie and report the same quiescent counters.
func TestBackendsAgree(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tc := range []struct{ name, network, addr string }{
		{"ipv4", "tcp4", "127.0.0.1:0"},
		{"ipv6", "tcp6", "[::1]:0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cg := testutil.TempCgroup(t)
			// Transition mode: its state records hold tcp_info, and the
			// one taken inside close() sees the quiescent flow.
			eb, err := ebpf.New(ebpf.Config{Cgroup: cg, Mode: ebpf.ModeTransition, FlushInterval: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			nb, err := netlink.New(netlink.Config{Cgroup: cg, Interval: 20 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			ecol, ncol := testutil.Run(t, eb), testutil.Run(t, nb)

			ln := testutil.Listen(t, cg, tc.network, tc.addr)
			p := testutil.Dial(t, cg, ln)
			cookie := testutil.Cookie(t, p.Client)
			p.Send(t, 4<<20)
			p.Quiesce(t)
			// Members newer than this kernel's tcp_info (6.1's has no
			// rcv_wnd) are not compared: netlink cannot have them.
			infoLen := testutil.TCPInfoLen(t, p.Client)
			quiet := time.Now()
			testutil.WaitFor(t, "a netlink sample after the transfer", 5*time.Second, func() bool {
				s := ncol.Find(cookie, flow.EventSample)
				return len(s) > 0 && s[len(s)-1].Time.After(quiet)
			})
			nlSamples := ncol.Find(cookie, flow.EventSample)
			nl := nlSamples[len(nlSamples)-1]
			p.Client.Close()
			testutil.WaitFor(t, "the ebpf state record of the close", 5*time.Second, func() bool {
				return len(ecol.Find(cookie, flow.EventState)) > 0
			})
			var eb1 *flow.Record
			for _, r := range ecol.Find(cookie, flow.EventState) {
				if r.State == flow.StateFinWait1 {
					eb1 = &r
					break
				}
			}
			if eb1 == nil {
				t.Fatal("no ebpf ESTABLISHED -> FIN_WAIT1 record")
			}
			if eb1.LocalAddr != nl.LocalAddr || eb1.RemoteAddr != nl.RemoteAddr ||
				eb1.LocalPort != nl.LocalPort || eb1.RemotePort != nl.RemotePort ||
				eb1.Family != nl.Family || eb1.CgroupID != nl.CgroupID || eb1.CA != nl.CA {
				t.Fatalf("same cookie, different flow:\nebpf    %+v\nnetlink %+v", *eb1, nl)
			}
			for _, f := range []flow.Field{
				flow.FieldBytesAcked, flow.FieldBytesReceived, flow.FieldBytesSent,
				flow.FieldDelivered, flow.FieldTotalRetrans, flow.FieldSndCwnd,
				flow.FieldRTT, flow.FieldRTTVar, flow.FieldMinRTT, flow.FieldSegsOut,
				flow.FieldDataSegsOut, flow.FieldSndMSS, flow.FieldRTO, flow.FieldOptions,
				flow.FieldSndWscale, flow.FieldRcvWscale, flow.FieldRcvWnd, flow.FieldSndWnd,
				flow.FieldDeliveryRate, flow.FieldPacingRate,
			} {
				if !testutil.InTCPInfo(f, infoLen) {
					if nl.Info.Has(f) {
						t.Errorf("%s: netlink has it, but the kernel's tcp_info (%d bytes) does not", f, infoLen)
					}
					continue
				}
				e, eok := eb1.Info.Get(f)
				n, nok := nl.Info.Get(f)
				if !eok || !nok || e != n {
					t.Errorf("%s: ebpf %d (%v), netlink %d (%v)", f, e, eok, n, nok)
				}
			}
			// Every member the kernel's own tcp_info has, ebpf computes too
			// (ebpf may report more on kernels whose tcp_info is older than
			// their tcp_sock).
			for f := flow.Field(0); f < flow.NumFields; f++ {
				if nl.Info.Has(f) && !eb1.Info.Has(f) {
					t.Errorf("%s: present in netlink, absent in ebpf", f)
				}
			}
		})
	}
}
