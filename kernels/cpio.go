package kernels

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
)

// CPIOWriter writes a cpio archive in the "newc" format the kernel unpacks
// as an initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
// Names are relative ("init", "dev/console"); parent directories are added
// before the first entry below them. Close writes the trailer.
type CPIOWriter struct {
	w    io.Writer
	ino  uint32
	dirs map[string]bool
	err  error
}

// NewCPIOWriter returns a writer of a newc archive to w.
func NewCPIOWriter(w io.Writer) *CPIOWriter {
	return &CPIOWriter{w: w, ino: 300000, dirs: map[string]bool{".": true, "": true}}
}

const (
	cpioModeDir  = 0o040000
	cpioModeFile = 0o100000
	cpioModeChr  = 0o020000
	cpioTrailer  = "TRAILER!!!"
)

type cpioHeader struct {
	name                 string
	mode                 uint32
	nlink                uint32
	size                 uint32
	rdevMajor, rdevMinor uint32
}

// Dir adds a directory (and its parents).
func (c *CPIOWriter) Dir(name string, perm fs.FileMode) error {
	name, err := c.clean(name)
	if err != nil {
		return err
	}
	if c.dirs[name] {
		return nil
	}
	if err := c.Dir(path.Dir(name), 0o755); err != nil {
		return err
	}
	c.dirs[name] = true
	return c.entry(cpioHeader{name: name, mode: cpioModeDir | uint32(perm.Perm()), nlink: 2}, nil)
}

// File adds a regular file with the given contents.
func (c *CPIOWriter) File(name string, perm fs.FileMode, data []byte) error {
	return c.FileFrom(name, perm, int64(len(data)), bytes.NewReader(data))
}

// FileFrom adds a regular file of size bytes read from r.
func (c *CPIOWriter) FileFrom(name string, perm fs.FileMode, size int64, r io.Reader) error {
	name, err := c.clean(name)
	if err != nil {
		return err
	}
	if size < 0 || size > 1<<32-1 {
		return fmt.Errorf("cpio: %s: size %d does not fit the newc format", name, size)
	}
	if err := c.Dir(path.Dir(name), 0o755); err != nil {
		return err
	}
	return c.entry(cpioHeader{name: name, mode: cpioModeFile | uint32(perm.Perm()), nlink: 1, size: uint32(size)}, r)
}

// CharDev adds a character device node.
func (c *CPIOWriter) CharDev(name string, perm fs.FileMode, major, minor uint32) error {
	name, err := c.clean(name)
	if err != nil {
		return err
	}
	if err := c.Dir(path.Dir(name), 0o755); err != nil {
		return err
	}
	return c.entry(cpioHeader{name: name, mode: cpioModeChr | uint32(perm.Perm()), nlink: 1, rdevMajor: major, rdevMinor: minor}, nil)
}

// Close writes the trailer. It does not close the underlying writer.
func (c *CPIOWriter) Close() error {
	if c.err != nil {
		return c.err
	}
	err := c.entry(cpioHeader{name: cpioTrailer, nlink: 1}, nil)
	c.err = errors.New("cpio: writer is closed")
	return err
}

func (c *CPIOWriter) clean(name string) (string, error) {
	if c.err != nil {
		return "", c.err
	}
	n := path.Clean(strings.TrimPrefix(name, "/"))
	if n == ".." || strings.HasPrefix(n, "../") || n == cpioTrailer {
		return "", fmt.Errorf("cpio: bad name %q", name)
	}
	return n, nil
}

// entry writes one header, the name and the data, each padded to 4 bytes.
func (c *CPIOWriter) entry(h cpioHeader, data io.Reader) error {
	if c.err != nil {
		return c.err
	}
	c.ino++
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize (with the NUL), check
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, h.mode, 0, 0, h.nlink, 0, h.size, 0, 0, h.rdevMajor, h.rdevMinor, len(h.name)+1, 0)
	buf := append([]byte(hdr), h.name...)
	buf = append(buf, 0)
	buf = append(buf, make([]byte, pad4(len(buf)))...)
	if _, err := c.w.Write(buf); err != nil {
		c.err = err
		return err
	}
	if h.size > 0 {
		n, err := io.CopyN(c.w, data, int64(h.size))
		if err != nil {
			c.err = fmt.Errorf("cpio: %s: wrote %d of %d bytes: %w", h.name, n, h.size, err)
			return c.err
		}
		if _, err := c.w.Write(make([]byte, pad4(int(h.size)))); err != nil {
			c.err = err
			return err
		}
	}
	return nil
}

func pad4(n int) int { return (4 - n%4) % 4 }
