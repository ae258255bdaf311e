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
// installed, works it out from the jiffies and the clock in /proc/timer_list.
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

// configurableHZ are the values of CONFIG_HZ x86 and arm64 kernels offer.
var configurableHZ = []uint32{100, 250, 300, 1000}

// hzFromTimerList finds HZ from the kernel's clocks as /proc/timer_list
// shows them. Jiffies start at INITIAL_JIFFIES, 2^32 − 300·HZ, and advance HZ
// times per second of CLOCK_MONOTONIC, so one reading of both names HZ,
// except around five minutes after boot, when every HZ gives about 2^32 (the
// kernel chose INITIAL_JIFFIES so that jiffies wrap there). Then the rate over
// a second decides, measured with the kernel's clock, not ours: reading the
// file can take long on a slow machine (an emulated one, say).
func hzFromTimerList() (uint32, error) {
	r0, err := readTimerList()
	if err != nil {
		return 0, err
	}
	if hz, ok := hzFromJiffiesSinceBoot(r0); ok {
		return hz, nil
	}
	time.Sleep(time.Second)
	r1, err := readTimerList()
	if err != nil {
		return 0, err
	}
	if r1.monotonicNS <= r0.monotonicNS {
		return 0, errors.New("/proc/timer_list: the kernel's clock did not advance")
	}
	return nearestHZ(float64(r1.jiffies-r0.jiffies) / (float64(r1.monotonicNS-r0.monotonicNS) / 1e9))
}

// timerList is what /proc/timer_list says of the kernel's clocks: "now at"
// (CLOCK_MONOTONIC) and the first CPU's "jiffies", printed in one pass.
type timerList struct {
	monotonicNS uint64
	jiffies     uint64
}

// hzFromJiffiesSinceBoot returns the HZ for which the jiffies counted since
// INITIAL_JIFFIES agree with the time since boot to within bootSkew (jiffies
// start ticking a little after the clock), when exactly one HZ does.
func hzFromJiffiesSinceBoot(r timerList) (uint32, bool) {
	const bootSkew = 2.0 // seconds
	found, n := uint32(0), 0
	for _, hz := range configurableHZ {
		initial := uint64(1)<<32 - 300*uint64(hz)
		counted := float64(int64(r.jiffies - initial))
		if skew := counted/float64(hz) - float64(r.monotonicNS)/1e9; math.Abs(skew) < bootSkew {
			found, n = hz, n+1
		}
	}
	return found, n == 1
}

func nearestHZ(rate float64) (uint32, error) {
	best, bestDiff := uint32(0), math.Inf(1)
	for _, hz := range configurableHZ {
		if d := math.Abs(rate - float64(hz)); d < bestDiff {
			best, bestDiff = hz, d
		}
	}
	if bestDiff > float64(best)*0.1 {
		return 0, fmt.Errorf("jiffies advance at %.0f/s, not a known HZ", rate)
	}
	return best, nil
}

func readTimerList() (timerList, error) {
	b, err := os.ReadFile("/proc/timer_list")
	if err != nil {
		return timerList{}, fmt.Errorf("no kernel config and no /proc/timer_list: %w", err)
	}
	return parseTimerList(b)
}

func parseTimerList(b []byte) (timerList, error) {
	var (
		r                    timerList
		haveNow, haveJiffies bool
		err                  error
	)
	for line := range bytes.Lines(b) {
		line = bytes.TrimSpace(line)
		if v, ok := bytes.CutPrefix(line, []byte("now at ")); ok && !haveNow {
			if ns, ok := bytes.CutSuffix(v, []byte(" nsecs")); ok {
				r.monotonicNS, err = strconv.ParseUint(string(ns), 10, 64)
				haveNow = err == nil
			}
		}
		if v, ok := bytes.CutPrefix(line, []byte("jiffies:")); ok && !haveJiffies {
			r.jiffies, err = strconv.ParseUint(string(bytes.TrimSpace(v)), 10, 64)
			haveJiffies = err == nil
		}
		if haveNow && haveJiffies {
			return r, nil
		}
	}
	return r, errors.New("/proc/timer_list: no \"now at\" and \"jiffies:\" lines")
}
