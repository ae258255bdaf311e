package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/flowd/flowd/cgroup"
)

// tempCgroup is a cgroup made by the suite under the cgroup2 root.
type tempCgroup struct {
	root, path string
	fd         int // open directory, for exec.Cmd's CgroupFD
}

func newTempCgroup(prefix string) (*tempCgroup, error) {
	root, err := cgroup.Mount()
	if err != nil {
		return nil, fmt.Errorf("finding cgroup2: %w", err)
	}
	dir, err := os.MkdirTemp(root, prefix)
	if err != nil {
		return nil, fmt.Errorf("making cgroup: %w", err)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		_ = os.Remove(dir)
		return nil, fmt.Errorf("opening cgroup %s: %w", dir, err)
	}
	return &tempCgroup{root: root, path: dir, fd: fd}, nil
}

// cpu returns the CPU time charged to the cgroup so far (cpu.stat
// usage_usec, which every cgroup2 directory has, controllers or not).
func (c *tempCgroup) cpu() (time.Duration, error) {
	b, err := os.ReadFile(filepath.Join(c.path, "cpu.stat"))
	if err != nil {
		return 0, fmt.Errorf("reading cpu.stat: %w", err)
	}
	return parseCPUStat(b)
}

func parseCPUStat(b []byte) (time.Duration, error) {
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "usage_usec "); ok {
			us, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parsing cpu.stat usage_usec %q: %w", v, err)
			}
			return time.Duration(us) * time.Microsecond, nil
		}
	}
	return 0, fmt.Errorf("no usage_usec in cpu.stat")
}

// remove moves what is left in the cgroup to the root and removes it.
func (c *tempCgroup) remove() error {
	unix.Close(c.fd)
	procs, _ := os.ReadFile(filepath.Join(c.path, "cgroup.procs"))
	for _, pid := range strings.Fields(string(procs)) {
		_ = os.WriteFile(filepath.Join(c.root, "cgroup.procs"), []byte(pid), 0)
	}
	var err error
	for range 100 {
		if err = os.Remove(c.path); err == nil || os.IsNotExist(err) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("removing cgroup %s: %w", c.path, err)
}

// mover moves this whole process into a cgroup for a while: the sockets it
// creates meanwhile belong to that cgroup, and so do the connections later
// accepted on listeners it created there. Only one move at a time.
type mover struct {
	mu   sync.Mutex
	home string // the cgroup the process started in
}

func newMover() (*mover, error) {
	root, err := cgroup.Mount()
	if err != nil {
		return nil, fmt.Errorf("finding cgroup2: %w", err)
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rel, ok := strings.CutPrefix(line, "0::"); ok {
			return &mover{home: filepath.Join(root, rel)}, nil
		}
	}
	return nil, fmt.Errorf("no cgroup2 entry in /proc/self/cgroup")
}

// in runs fn with the process in cg, then moves it back.
func (m *mover) in(cg *tempCgroup, fn func() error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := movePID(cg.path, os.Getpid()); err != nil {
		return err
	}
	err := fn()
	if berr := movePID(m.home, os.Getpid()); berr != nil && err == nil {
		err = berr
	}
	return err
}

// atHome runs fn while no move is under way: processes fn starts begin in
// the suite's own cgroup.
func (m *mover) atHome(fn func() error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return fn()
}

func movePID(dir string, pid int) error {
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("moving pid %d to %s: %w", pid, dir, err)
	}
	return nil
}
