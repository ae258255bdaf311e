package ebpf

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// kernelHZ returns the kernel's CONFIG_HZ, needed to convert the jiffies
// that tcp_sock keeps (rto, ato, lsndtime, chrono stats) to µs and ms exactly
// as tcp_get_info() does. It reads the kernel config and, where none is
// installed, measures the jiffies rate from /proc/timer_list.
func kernelHZ() (uint32, error) {
	var uts unix.Utsname
	_ = unix.Uname(&uts)
	release := unix.ByteSliceToString(uts.Release[:])
	for _, path := range []string{"/proc/config.gz", "/boot/config-" + release} {
		hz, err := hzFromConfigFile(path)
		if err == nil {
			return hz, nil
		}
	}
	return hzFromTimerList()
}

// jiffyRatios are the factors that convert jiffies to µs and ms the way
// include/linux/jiffies.h does for one HZ: jiffies_to_usecs() multiplies by
// usecNum/usecDen and rounds down, jiffies_to_msecs() by msecNum/msecDen and
// rounds up, both fractions in lowest terms; tcp_get_info() scales the
// chrono stats by usecPerJiffy, USEC_PER_SEC / HZ rounded down.
type jiffyRatios struct {
	usecNum, usecDen, msecNum, msecDen, usecPerJiffy uint32
}

func jiffyConversions(hz uint32) jiffyRatios {
	const usecPerSec, msecPerSec = 1_000_000, 1_000
	ug, mg := gcd(usecPerSec, hz), gcd(msecPerSec, hz)
	return jiffyRatios{
		usecNum: usecPerSec / ug, usecDen: hz / ug,
		msecNum: msecPerSec / mg, msecDen: hz / mg,
		usecPerJiffy: usecPerSec / hz,
	}
}

func gcd(a, b uint32) uint32 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

func hzFromConfigFile(path string) (uint32, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var r io.Reader = f
	if strings.HasSuffix(path, ".gz") {
		gz, err := gzip.NewReader(f)
		if err != nil {
			return 0, err
		}
		defer gz.Close()
		r = gz
	}
	return hzFromConfig(r)
}

func hzFromConfig(r io.Reader) (uint32, error) {
	s := bufio.NewScanner(r)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "CONFIG_HZ="); ok {
			hz, err := strconv.ParseUint(v, 10, 32)
			if err != nil || hz == 0 {
				return 0, fmt.Errorf("bad CONFIG_HZ %q", v)
			}
			return uint32(hz), nil
		}
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no CONFIG_HZ in kernel config")
}

// hzFromTimerList samples the jiffies counter twice and rounds the rate
// to the nearest HZ the kernel can be configured with.
func hzFromTimerList() (uint32, error) {
	j0, t0, err := readJiffies()
	if err != nil {
		return 0, err
	}
	time.Sleep(200 * time.Millisecond)
	j1, t1, err := readJiffies()
	if err != nil {
		return 0, err
	}
	return nearestHZ(float64(j1-j0) / t1.Sub(t0).Seconds())
}

func nearestHZ(rate float64) (uint32, error) {
	best, bestDiff := uint32(0), math.Inf(1)
	for _, hz := range []uint32{100, 250, 300, 1000} {
		if d := math.Abs(rate - float64(hz)); d < bestDiff {
			best, bestDiff = hz, d
		}
	}
	if bestDiff > float64(best)*0.1 {
		return 0, fmt.Errorf("jiffies advance at %.0f/s, not a known HZ", rate)
	}
	return best, nil
}

func readJiffies() (uint64, time.Time, error) {
	b, err := os.ReadFile("/proc/timer_list")
	now := time.Now()
	if err != nil {
		return 0, now, fmt.Errorf("no kernel config and no /proc/timer_list: %w", err)
	}
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(bytes.TrimSpace(line), []byte("jiffies:")); ok {
			j, err := strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
			if err == nil {
				return j, now, nil
			}
		}
	}
	return 0, now, errors.New("no jiffies in /proc/timer_list")
}
