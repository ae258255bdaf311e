package cgroup

import (
	"errors"
	"io/fs"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Names turns cgroup ids into paths relative to the cgroup2 mount
// ("system.slice/nginx.service"; "/" for the root), the name a person
// knows a service by. It walks one subtree of the hierarchy, the cgroups
// flowd records, and remembers what it found: cgroup ids are never reused
// (kernfs ids only grow), so a path once found stays the cgroup's, and a
// cgroup removed since keeps its last path (its flows may outlive it).
// An id it does not know makes it walk again, at most once per
// MinRewalk, so that a cgroup created after start gets its name while a
// flood of unknown ids costs one walk a second. It is safe for
// concurrent use.
type Names struct {
	mount, root string
	minRewalk   time.Duration

	mu       sync.Mutex
	paths    map[uint64]string
	lastWalk time.Time
}

// DefaultMinRewalk is how often at most Names walks its subtree again.
const DefaultMinRewalk = time.Second

// NewNames returns a Names for the cgroups at and below root, a directory
// of the cgroup2 hierarchy mounted at mount. Nothing is read until the
// first Path.
func NewNames(mount, root string) *Names {
	return &Names{mount: mount, root: root, minRewalk: DefaultMinRewalk, paths: make(map[uint64]string)}
}

// Path returns the path of cgroup id relative to the mount, and false
// when id is not a cgroup of the subtree (or not yet: it may be found by
// a later walk).
func (n *Names) Path(id uint64) (string, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if p, ok := n.paths[id]; ok {
		return p, true
	}
	if id == 0 || time.Since(n.lastWalk) < n.minRewalk {
		return "", false
	}
	n.walk()
	p, ok := n.paths[id]
	return p, ok
}

// walk records the id and relative path of every cgroup of the subtree.
// Errors (a cgroup removed while it walks, the subtree gone) end the walk
// early or skip a directory: what was found is kept.
func (n *Names) walk() {
	n.lastWalk = time.Now()
	_ = filepath.WalkDir(n.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p == n.root {
				return err
			}
			return nil
		}
		if !d.IsDir() {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return fs.SkipDir
			}
			return nil
		}
		n.paths[st.Ino] = relative(n.mount, p)
		return nil
	})
}

// relative returns p relative to mount, "/" for the mount itself.
func relative(mount, p string) string {
	rel, err := filepath.Rel(mount, p)
	if err != nil || rel == "." {
		return "/"
	}
	return rel
}
