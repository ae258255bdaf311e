package netlink

import (
	"testing"
	"time"

	"github.com/flowd/flowd/backends"
)

// TestDumpLog: the durations are taken once, at most the last
// MaxDumpDurations of them; failures add up.
func TestDumpLog(t *testing.T) {
	var l dumpLog
	const n = backends.MaxDumpDurations + 100
	for i := 1; i <= n; i++ {
		l.add(time.Duration(i), i%2)
	}
	s := l.take()
	if len(s.Durations) != backends.MaxDumpDurations || s.Durations[0] != 101 || s.Durations[len(s.Durations)-1] != n {
		t.Errorf("took %d durations, %v to %v; want the last %d", len(s.Durations), s.Durations[0], s.Durations[len(s.Durations)-1], backends.MaxDumpDurations)
	}
	if s.Failed != n/2 {
		t.Errorf("Failed = %d, want %d", s.Failed, n/2)
	}
	if s := l.take(); len(s.Durations) != 0 || s.Failed != n/2 {
		t.Errorf("second take: %d durations, %d failed", len(s.Durations), s.Failed)
	}
}
