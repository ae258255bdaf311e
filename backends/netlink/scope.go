package netlink

import (
	"github.com/flowd/flowd/cgroup"
)

// maxOutside bounds the cache of cgroup ids known to be outside the
// subtree; when it is full it is emptied and refilled as ids come back.
const maxOutside = 4096

// scope tells which cgroup ids are in the configured cgroup's subtree.
//
// A cgroup cannot move to another parent, so an id found inside (or
// outside) the subtree stays there. The scope therefore caches both answers
// and walks the subtree again only for an id it has not classified yet, at
// most once per dump. The walk happens after the dump, so it finds every
// cgroup a dumped socket was created in, unless that cgroup has been removed
// since (such sockets are left out).
type scope struct {
	root    string              // the configured cgroup
	all     bool                // root is the cgroup2 root: every id is inside
	inside  map[uint64]struct{} // from the last walk
	outside map[uint64]struct{} // ids that no walk found
	walked  bool                // the subtree was walked during this dump
}

func newScope(root string, all bool) scope {
	return scope{root: root, all: all, outside: make(map[uint64]struct{})}
}

// newDump allows one more walk of the subtree.
func (s *scope) newDump() { s.walked = false }

// walk walks the subtree now (it counts as this dump's walk) and returns
// the ids in it: none while the root cgroup is removed. The map is the
// scope's: it must not be changed.
func (s *scope) walk() (map[uint64]struct{}, error) {
	inside, err := cgroup.Subtree(s.root)
	if cgroup.IsRemoved(err) {
		inside, err = map[uint64]struct{}{}, nil
	}
	if err != nil {
		return nil, err
	}
	s.use(inside)
	return inside, nil
}

// use takes inside, the ids of a walk of the subtree made for this dump
// by someone else, as this dump's walk.
func (s *scope) use(inside map[uint64]struct{}) { s.inside, s.walked = inside, true }

// ids returns the ids in the subtree as of this dump's walk, walking it
// now if it has not been. The map is the scope's: it must not be changed.
func (s *scope) ids() (map[uint64]struct{}, error) {
	if s.walked {
		return s.inside, nil
	}
	return s.walk()
}

// contains reports whether the cgroup with this id is in the subtree.
func (s *scope) contains(id uint64) (bool, error) {
	if s.all {
		return true, nil
	}
	if _, ok := s.inside[id]; ok {
		return true, nil
	}
	if _, ok := s.outside[id]; ok {
		return false, nil
	}
	if s.walked {
		// Created after this dump's walk: decide at the next dump.
		return false, nil
	}
	if _, err := s.walk(); err != nil {
		return false, err
	}
	if _, ok := s.inside[id]; ok {
		return true, nil
	}
	if len(s.outside) >= maxOutside {
		clear(s.outside)
	}
	s.outside[id] = struct{}{}
	return false, nil
}
