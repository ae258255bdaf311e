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
// flowd records, when it is asked for an id it does not know, at most once
// per DefaultMinRewalk, so that a cgroup created after start gets its name
// while a flood of unknown ids costs one walk a second.
//
// Cgroup ids (kernfs ids) only grow and are never reused. So an id asked
// for before a walk began, or found by an earlier walk, that the walk does
// not find is gone for good (removed, or outside the subtree): Names
// answers it at once, without walking again. Each walk also forgets the
// removed cgroups, but keeps a removed cgroup's path while it is asked
// for at least once every KeepRemoved (its flows may outlive it), so that
// what Names holds follows the live cgroups, not every cgroup ever seen.
// It is safe for concurrent use.
type Names struct {
	mount, root string
	now         func() time.Time // time.Now; tests move it on by hand

	mu        sync.Mutex
	paths     map[uint64]entry
	settled   uint64 // an id up to this one that paths lacks will never be found
	asked     uint64 // the highest id asked for that paths lacked
	found     uint64 // the highest id a walk found
	walking   bool
	lastWalk  time.Time
	lastPrune time.Time
	walks     int // for tests
}

// entry is the path of one cgroup, and whether it was asked for since the
// last pruning.
type entry struct {
	path string
	used bool
}

const (
	// DefaultMinRewalk is how often at most Names walks its subtree again.
	DefaultMinRewalk = time.Second
	// KeepRemoved is how long the path of a removed cgroup is kept
	// without being asked for; removed cgroups are forgotten at most this
	// often.
	KeepRemoved = 10 * time.Minute
)

// NewNames returns a Names for the cgroups at and below root, a directory
// of the cgroup2 hierarchy mounted at mount. Nothing is read until the
// first Path.
func NewNames(mount, root string) *Names {
	return &Names{mount: mount, root: root, now: time.Now, paths: make(map[uint64]entry)}
}

// Path returns the path of cgroup id relative to the mount, and false
// when id is not a cgroup of the subtree, not yet (a later walk may find
// it) or no longer (a removed cgroup forgotten). The path of a known id
// costs a map lookup; an unknown one may cost a walk, which other callers
// do not wait for.
func (n *Names) Path(id uint64) (string, bool) {
	n.mu.Lock()
	if e, ok := n.paths[id]; ok {
		if !e.used {
			e.used = true
			n.paths[id] = e
		}
		n.mu.Unlock()
		return e.path, true
	}
	if id == 0 || id <= n.settled {
		n.mu.Unlock()
		return "", false
	}
	n.asked = max(n.asked, id)
	now := n.now()
	if n.walking || now.Sub(n.lastWalk) < DefaultMinRewalk {
		n.mu.Unlock()
		return "", false
	}
	// Every id up to bound was given to a cgroup before the walk begins:
	// if the walk does not find it, it is gone.
	bound := max(n.asked, n.found)
	n.walking, n.lastWalk = true, now
	n.mu.Unlock()

	// Other callers are answered from paths meanwhile, without walking.
	found, complete := n.walk()

	n.mu.Lock()
	defer n.mu.Unlock()
	n.walking = false
	n.walks++
	n.update(found, complete, now)
	if complete {
		n.settled = max(n.settled, bound)
	}
	e, ok := n.paths[id]
	if ok {
		e.used = true
		n.paths[id] = e
	}
	return e.path, ok
}

// cgroupDir is a cgroup a walk found.
type cgroupDir struct {
	id  uint64
	dir string
}

// walk lists every cgroup of the subtree, and reports whether it saw all
// of them: a cgroup removed while it walks is skipped (its children went
// before it), any other error leaves the list incomplete. (A cgroup
// renamed while it walks may be missed: unnamed then, never misnamed.)
func (n *Names) walk() (found []cgroupDir, complete bool) {
	complete = true
	err := filepath.WalkDir(n.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				complete = false
			}
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
			complete = false
			return nil
		}
		found = append(found, cgroupDir{id: st.Ino, dir: p})
		return nil
	})
	return found, complete && err == nil
}

// update makes paths what a walk found, plus the removed cgroups still
// asked for: once per KeepRemoved, those not asked for since the last
// pruning are forgotten. A walk that did not see every cgroup forgets
// nothing. A cgroup keeps the path it was first found with.
func (n *Names) update(found []cgroupDir, complete bool, now time.Time) {
	prune := complete && now.Sub(n.lastPrune) >= KeepRemoved
	paths := make(map[uint64]entry, len(found))
	for _, c := range found {
		e, ok := n.paths[c.id]
		if !ok {
			e = entry{path: relative(n.mount, c.dir)}
		}
		paths[c.id] = e
		n.found = max(n.found, c.id)
	}
	for id, e := range n.paths {
		if _, live := paths[id]; !live && (e.used || !prune) {
			paths[id] = e
		}
	}
	if prune {
		for id, e := range paths {
			if e.used {
				e.used = false
				paths[id] = e
			}
		}
		n.lastPrune = now
	}
	n.paths = paths
}

// relative returns p relative to mount, "/" for the mount itself.
func relative(mount, p string) string {
	rel, err := filepath.Rel(mount, p)
	if err != nil || rel == "." {
		return "/"
	}
	return rel
}
