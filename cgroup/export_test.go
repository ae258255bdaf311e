package cgroup

import "time"

// SetClock makes n read the time from now.
func (n *Names) SetClock(now func() time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.now = now
}

// Walks returns how many times n walked its subtree.
func (n *Names) Walks() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.walks
}

// Held returns how many paths n holds.
func (n *Names) Held() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.paths)
}
