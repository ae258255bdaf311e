package cgroup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// PollInterval is how often a Watcher that cannot use inotify looks at its
// path instead.
const PollInterval = time.Second

// Watcher tells when the directory at a path may have been removed,
// created or replaced, by calling a function; the caller then looks
// (ID). It watches with inotify the nearest existing ancestor of the path
// (its parent while the parent exists) and that ancestor's parent, for
// entries created, removed or renamed on the way to the path: the
// ancestor's watch sees the path's removal and creation, its parent's the
// ancestor's own (cgroupfs sends no IN_DELETE_SELF to a watched directory
// that is removed). Events of their other entries (sibling services
// starting and stopping) are ignored without a system call. Where inotify
// cannot be used (the per-user limit on inotify instances, 128 by
// default, is a common one), it calls the function every PollInterval
// instead; Polling says why.
type Watcher struct {
	path    string
	changed func()
	inotify *fsnotify.Watcher // nil when polling from the start
	watched []string          // the directories inotify watches: the nearest ancestor, and its parent
	stop    chan struct{}
	done    chan struct{}
	close   sync.Once

	mu      sync.Mutex
	polling error // why it polls; nil while inotify works
}

// Watch starts watching path, an absolute cgroup directory, calling
// changed (from a goroutine of its own, never twice at once) whenever the
// directory may have been removed or created since. It calls changed once
// at the start, since the path may have changed before the watch began.
// Close stops it.
func Watch(path string, changed func()) *Watcher {
	return watch(path, changed, fsnotify.NewWatcher)
}

// watch is Watch with the inotify watcher made by newInotify (tests make
// it fail).
func watch(path string, changed func(), newInotify func() (*fsnotify.Watcher, error)) *Watcher {
	w := &Watcher{
		path:    filepath.Clean(path),
		changed: changed,
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
	}
	in, err := newInotify()
	if err == nil {
		w.inotify = in
		err = w.rewatch()
	}
	if err != nil {
		w.polling = err
	}
	go w.run()
	return w
}

// Polling returns why the watcher looks at its path every PollInterval
// instead of being told by inotify, or nil when inotify works.
func (w *Watcher) Polling() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.polling
}

// Close stops the watcher; changed is not called once it has returned.
// It may be called more than once.
func (w *Watcher) Close() error {
	var err error
	w.close.Do(func() {
		close(w.stop)
		<-w.done
		if w.inotify != nil {
			err = w.inotify.Close()
		}
	})
	return err
}

func (w *Watcher) run() {
	defer close(w.done)
	var events <-chan fsnotify.Event
	var errs <-chan error
	if w.inotify != nil {
		events, errs = w.inotify.Events, w.inotify.Errors
	}
	var tick <-chan time.Time
	if w.Polling() != nil {
		t := time.NewTicker(PollInterval)
		defer t.Stop()
		tick = t.C
	}
	w.changed()
	for {
		select {
		case <-w.stop:
			return
		case ev := <-events:
			if !w.concerns(ev.Name) {
				continue
			}
		case <-errs:
			// A full event queue: something may have been missed.
		case <-tick:
		}
		if tick == nil {
			if err := w.rewatch(); err != nil {
				w.mu.Lock()
				w.polling = err
				w.mu.Unlock()
				t := time.NewTicker(PollInterval)
				defer t.Stop()
				tick = t.C
			}
		}
		w.changed()
	}
}

// concerns reports whether an event about name may change what path
// names: name is the path or one of its ancestors.
func (w *Watcher) concerns(name string) bool {
	name = filepath.Clean(name)
	return name == w.path || strings.HasPrefix(w.path, name+"/")
}

// rewatch moves the inotify watches to the nearest existing ancestor of
// the path and its parent. The watches are added before the ancestor is
// looked for again, so that nothing created in between is missed.
func (w *Watcher) rewatch() error {
	for {
		dir := nearestAncestor(w.path)
		want := []string{dir}
		if dir != "/" {
			want = append(want, filepath.Dir(dir))
		}
		if slices.Equal(want, w.watched) {
			return nil
		}
		for _, d := range want {
			if err := w.inotify.Add(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			} // a directory removed in between is found missing in the next round
		}
		for _, d := range w.watched {
			if !slices.Contains(want, d) {
				_ = w.inotify.Remove(d) // fails when d was removed: its watch went with it
			}
		}
		w.watched = want
	}
}

// nearestAncestor returns the deepest existing directory above path.
func nearestAncestor(path string) string {
	dir := filepath.Dir(path)
	for dir != "/" {
		if fi, err := os.Stat(dir); err == nil && fi.IsDir() {
			return dir
		}
		dir = filepath.Dir(dir)
	}
	return dir
}
