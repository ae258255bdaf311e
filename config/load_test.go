package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestConfigFileKinds: a config file is a regular file or a pipe of at
// most 1 MiB. A device (/dev/zero would never end), a directory, or more
// than 1 MiB is a configuration error that names the file, found before
// anything is read past the limit.
func TestConfigFileKinds(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.yaml")
	// Valid YAML all along: only the size is wrong.
	content := append([]byte("backends: [auto]\n"), bytes.Repeat([]byte("# padding\n"), maxFileSize/10)...)
	if err := os.WriteFile(big, content, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		path string
		want string
	}{
		{"/dev/zero", "/dev/zero is a character device, not a regular file"},
		{dir, dir + " is a directory"},
		{big, fmt.Sprintf("%s holds %d bytes, more than 1 MiB", big, len(content))},
	} {
		_, err := Load(tt.path)
		var ce *Error
		if !errors.As(err, &ce) || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Load(%s) = %v, want a config error with %q", tt.path, err, tt.want)
		}
	}

	// Exactly 1 MiB is still a config file.
	if err := os.Truncate(big, maxFileSize); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(big); err != nil {
		t.Errorf("Load of a file of 1 MiB: %v", err)
	}
}

// TestConfigFromPipe: `--config <(...)` gives a pipe: it is read, up to
// the limit.
func TestConfigFromPipe(t *testing.T) {
	for _, tt := range []struct {
		name    string
		content []byte
		want    string // "" = loads
	}{
		{"small", []byte("ebpf:\n  mode: transition\n"), ""},
		{"endless", bytes.Repeat([]byte("# padding\n"), 2*maxFileSize/10), "holds more than 1 MiB"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fifo := filepath.Join(t.TempDir(), "fifo")
			if err := syscall.Mkfifo(fifo, 0o600); err != nil {
				t.Fatal(err)
			}
			go func() {
				w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
				if err != nil {
					return
				}
				defer w.Close()
				w.Write(tt.content) // until the reader stops
			}()
			c, err := Load(fifo)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Load of a pipe: %v", err)
			case tt.want == "" && c.EBPF.Mode != "transition":
				t.Errorf("ebpf.mode = %q from the pipe, want transition", c.EBPF.Mode)
			case tt.want != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Load of %d bytes from a pipe = %v, want an error with %q", len(tt.content), err, tt.want)
			}
		})
	}
}
