package otlp

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/flowd/flowd/flow"
	"github.com/flowd/flowd/internal/testutil"
	"github.com/flowd/flowd/otlp/otlpconfig"
)

// TestDeadlineDropsUnencoded gives a sender batches after Close's
// deadline: it drops and counts them without taking a request buffer to
// encode them, so that Close is not late by the encoding of what it drops.
func TestDeadlineDropsUnencoded(t *testing.T) {
	cfg := otlpconfig.Default()
	cfg.Endpoint = testutil.FreeLoopbackAddr(t)
	e, err := New(cfg, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// After Close the senders have returned and the context is cancelled,
	// as at the deadline.
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	const batches, size = 3, 10
	e.mu.Lock()
	e.idle = nil
	for range batches {
		e.full = append(e.full, make([]flow.Record, size))
		e.queued += size
	}
	e.mu.Unlock()

	e.sendQueued(nil)
	if s := e.Stats(); s.Dropped != (Drops{Shutdown: batches * size}) || s.Queued != 0 || s.Requests != 0 {
		t.Errorf("stats %+v: want the %d records dropped at shutdown, none queued or sent", s, batches*size)
	}
	if len(e.idle) != 0 {
		t.Errorf("%d request buffers taken to encode batches after the deadline", len(e.idle))
	}
	if len(e.spare) == 0 {
		t.Error("the dropped batches were not kept for reuse")
	}
}

// TestWarnNamesTheCause logs drops at shutdown and after failed retries:
// the warning names the keys that bound those, not the queue's size, and
// carries the error that made the retries fail.
func TestWarnNamesTheCause(t *testing.T) {
	cfg := otlpconfig.Default()
	cfg.Endpoint = testutil.FreeLoopbackAddr(t)
	log, hook := logtest.NewNullLogger()
	e, err := New(cfg, Options{Log: log})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	hook.Reset()
	e.dropShutdown.Add(5)
	e.dropFailed.Add(3)
	e.setProblem(errors.New("connection refused"))
	e.warn(Stats{})

	entry := hook.LastEntry()
	if entry == nil {
		t.Fatal("no warning")
	}
	if want := "(see output.otlp.retry, output.otlp.shutdown_timeout)"; !strings.HasSuffix(entry.Message, want) {
		t.Errorf("message %q does not end with %q", entry.Message, want)
	}
	if got := entry.Data[logrus.ErrorKey]; got == nil || !strings.Contains(fmt.Sprint(got), "connection refused") {
		t.Errorf("error field %v, want the retries' error", got)
	}
}
