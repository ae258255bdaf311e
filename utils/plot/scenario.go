package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/utils/flows"
	"github.com/flowd/flowd/utils/iperf3"
	"github.com/flowd/flowd/utils/report"
)

// scenario is what one scenario directory holds.
type scenario struct {
	Dir           string
	Report        report.Report
	EBPF, Netlink map[uint64]*flows.Flow
	Intervals     map[int][]iperf3.Stream // iperf3's sender intervals by socket
}

func loadScenario(dir string) (*scenario, error) {
	sc := &scenario{Dir: dir}
	if err := loadReport(filepath.Join(dir, reportFile), &sc.Report); err != nil {
		return nil, err
	}
	ebpf, err := flows.Load(filepath.Join(dir, ebpfFile))
	if err != nil {
		return nil, err
	}
	netlink, err := flows.Load(filepath.Join(dir, netlinkFile))
	if err != nil {
		return nil, err
	}
	ip, err := iperf3.Load(filepath.Join(dir, iperfFile))
	if err != nil {
		return nil, err
	}
	sc.EBPF, sc.Netlink, sc.Intervals = flows.Group(ebpf), flows.Group(netlink), ip.SenderIntervals()
	return sc, nil
}

func loadReport(path string, r *report.Report) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, r); err != nil {
		return fmt.Errorf("%s: not a flowd validation report: %w", path, err)
	}
	if len(r.Streams) == 0 {
		return fmt.Errorf("%s: report has no streams", path)
	}
	for i, s := range r.Streams {
		if s.Start.IsZero() {
			return fmt.Errorf("%s: stream %d (%s) has no start time", path, i+1, s.Name)
		}
	}
	return nil
}

// streamData is the raw readings of one stream's sending end.
type streamData struct {
	Stream        report.Stream
	EBPF, Netlink []flow.Record
	Iperf         []iperf3.Stream
	noIperf       bool // iperf3 has no sender intervals for the stream's socket
}

// stream returns the readings of report stream i.
func (sc *scenario) stream(i int) (*streamData, error) {
	st := sc.Report.Streams[i]
	ef, nf := sc.EBPF[st.Cookie], sc.Netlink[st.Cookie]
	if ef == nil {
		return nil, fmt.Errorf("%s: no records with cookie %d (stream %d, %s, in %s)",
			filepath.Join(sc.Dir, ebpfFile), st.Cookie, i+1, st.Name, reportFile)
	}
	if nf == nil {
		return nil, fmt.Errorf("%s: no records with cookie %d (stream %d, %s, in %s)",
			filepath.Join(sc.Dir, netlinkFile), st.Cookie, i+1, st.Name, reportFile)
	}
	ivs := sc.Intervals[st.IperfSocket]
	return &streamData{Stream: st, EBPF: ef.Records, Netlink: nf.Records, Iperf: ivs, noIperf: len(ivs) == 0}, nil
}
