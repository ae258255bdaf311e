// Package cgroup finds the cgroup v2 hierarchy and identifies its directories.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNoCgroup2 is returned when no cgroup2 file system is mounted.
var ErrNoCgroup2 = errors.New("no cgroup2 file system is mounted")

// Mount returns the mount point of the cgroup v2 hierarchy, read from
// /proc/self/mountinfo ("/sys/fs/cgroup" on most hosts,
// "/sys/fs/cgroup/unified" on hybrid ones).
func Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("reading mount table: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f)
}

func parseMountinfo(f interface{ Read([]byte) (int, error) }) (string, error) {
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for s.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		fields := strings.Fields(s.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) {
			continue
		}
		if fields[sep+1] == "cgroup2" {
			return unescapeOctal(fields[4]), nil
		}
	}
	if err := s.Err(); err != nil {
		return "", fmt.Errorf("reading mount table: %w", err)
	}
	return "", ErrNoCgroup2
}

// unescapeOctal undoes the \040-style escaping of mountinfo paths.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for j := 1; j <= 3; j++ {
				c := s[i+j]
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + (c - '0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Resolve turns the configured cgroup into an absolute directory on the
// cgroup2 file system. An empty path means the root of the hierarchy; a
// relative one is relative to it, not to the working directory
// ("system.slice/nginx.service", as systemd and /proc/PID/cgroup name
// cgroups).
func Resolve(path string) (string, error) {
	if path == "" || !filepath.IsAbs(path) {
		mount, err := Mount()
		if err != nil {
			return "", err
		}
		path = filepath.Join(mount, path)
	}
	path = filepath.Clean(path)
	if err := Check(path); err != nil {
		return "", err
	}
	return path, nil
}

// Check returns an error unless path is a directory on a cgroup2 file system.
func Check(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%s does not exist", path)
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%s is not on a cgroup2 file system", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", path)
	}
	return nil
}

// ID returns the cgroup id of a cgroup2 directory: its inode number, the
// value the kernel reports as INET_DIAG_CGROUP_ID and bpf_get_current_cgroup_id.
func ID(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

// Subtree returns the ids of path and of every cgroup below it.
func Subtree(path string) (map[uint64]struct{}, error) {
	ids := make(map[uint64]struct{})
	err := eachCgroup(path, func(dir string) error {
		id, err := ID(dir)
		if err == nil {
			ids[id] = struct{}{}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	return ids, nil
}

// Processes returns the ids of the processes in path and in every cgroup
// below it.
func Processes(path string) ([]int, error) {
	var pids []int
	err := eachCgroup(path, func(dir string) error {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			return err
		}
		for _, f := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(f)
			if err != nil {
				return fmt.Errorf("%s/cgroup.procs: %q is not a process id", dir, f)
			}
			pids = append(pids, pid)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return pids, nil
}

// eachCgroup calls fn for path and for every cgroup below it. A cgroup
// below path that is removed while it walks is skipped (its files read
// ENODEV once it is gone).
func eachCgroup(path string, fn func(dir string) error) error {
	err := filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			err = fn(p)
		}
		if err != nil && p != path && IsRemoved(err) {
			return nil // removed while we walked
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("walking cgroup %s: %w", path, err)
	}
	return nil
}

// IsRemoved reports whether err says that a cgroup directory is gone: it
// does not exist (any more), or it was removed while it was read, which
// cgroupfs reports as ENODEV.
func IsRemoved(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, unix.ENODEV)
}
