// Package flows reads flowd's JSON Lines output (files, directories of
// rotated files, standard input; gzip'd or not; complete or partial sample
// lines), selects flows, and summarises each: bytes, rates, retransmits,
// RTT quantiles and what limited it. flowd flows prints the summaries;
// utils/plot draws the flows.
package flows

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"

	"github.com/flowd/flowd/flow"
)

// Load reads a JSON Lines file written by flowd, plain or gzip'd, with
// partial samples (output.samples: changes) completed from the lines before
// them. A partial sample whose flow has no earlier line in the file is an
// error: the file does not start where flowd started writing it. Errors
// name the file and line.
func Load(path string) ([]flow.Record, error) {
	var (
		out []flow.Record
		r   flow.Record
	)
	rd := NewReader([]Source{File(path)})
	defer rd.Close()
	for {
		complete, err := rd.Next(&r)
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		if !complete {
			return nil, fmt.Errorf("%s: a partial sample of flow %d (%s), which has no earlier line", rd.Position(), r.Cookie, r.Backend)
		}
		out = append(out, r)
	}
}

// Key names a flow in flowd's output: the backend that recorded it and
// the socket's cookie. Both backends give a socket the same cookie.
type Key struct {
	Backend string
	Cookie  uint64
}

// KeyOf returns r's key.
func KeyOf(r *flow.Record) Key { return Key{r.Backend, r.Cookie} }

// Tuple identifies a flow from one end.
type Tuple struct {
	Local, Remote netip.AddrPort
}

func (t Tuple) String() string { return t.Local.String() + "->" + t.Remote.String() }

// TupleOf returns a record's tuple, with IPv4-mapped addresses unmapped.
func TupleOf(r *flow.Record) Tuple {
	return Tuple{
		Local:  netip.AddrPortFrom(r.LocalAddr.Unmap(), r.LocalPort),
		Remote: netip.AddrPortFrom(r.RemoteAddr.Unmap(), r.RemotePort),
	}
}

// Flow is the records of one socket, in time order.
type Flow struct {
	Cookie  uint64
	Tuple   Tuple
	Records []flow.Record
}

// Group splits records into flows by cookie, each sorted by time.
func Group(recs []flow.Record) map[uint64]*Flow {
	out := map[uint64]*Flow{}
	for _, r := range recs {
		f := out[r.Cookie]
		if f == nil {
			f = &Flow{Cookie: r.Cookie, Tuple: TupleOf(&r)}
			out[r.Cookie] = f
		}
		f.Records = append(f.Records, r)
	}
	for _, f := range out {
		sort.SliceStable(f.Records, func(i, j int) bool { return f.Records[i].Time.Before(f.Records[j].Time) })
	}
	return out
}

// ByTuple returns the flow with this tuple, or nil. When a tuple was reused,
// the flow opened last wins.
func ByTuple(flows map[uint64]*Flow, t Tuple) *Flow {
	var best *Flow
	for _, f := range flows {
		if f.Tuple == t && (best == nil || f.Records[0].Time.After(best.Records[0].Time)) {
			best = f
		}
	}
	return best
}

// Last returns the flow's last record, or nil.
func (f *Flow) Last() *flow.Record {
	if f == nil || len(f.Records) == 0 {
		return nil
	}
	return &f.Records[len(f.Records)-1]
}
