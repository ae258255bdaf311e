package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/flowd/flowd/internal/testutil"
)

// collector is an OpenTelemetry Collector (the tests', internal/otelcol)
// that receives OTLP/gRPC on loopback and discards it, as a remote tier
// would take flowd's export off the host.
type collector struct {
	cmd    *exec.Cmd
	exited chan struct{}
	addr   string
}

// collector starts the suite's collector, once, and returns its address.
func (s *suite) collector(ctx context.Context) (string, error) {
	if s.otel != nil {
		return s.otel.addr, nil
	}
	bin, err := testutil.BuildOTelCollector()
	if err != nil {
		return "", err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg := filepath.Join(s.tmp, "otelcol.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, `receivers:
  otlp:
    protocols:
      grpc: {endpoint: %q}
exporters:
  nop:
service:
  telemetry: {logs: {level: warn}, metrics: {level: none}}
  pipelines:
    logs: {receivers: [otlp], exporters: [nop]}
    metrics: {receivers: [otlp], exporters: [nop]}
`, addr), 0o600); err != nil {
		return "", err
	}
	c := &collector{cmd: exec.CommandContext(ctx, bin, "--config", cfg), exited: make(chan struct{}), addr: addr}
	if err := c.cmd.Start(); err != nil {
		return "", fmt.Errorf("starting the collector: %w", err)
	}
	go func() { _ = c.cmd.Wait(); close(c.exited) }()
	s.otel = c
	for deadline := time.Now().Add(30 * time.Second); ; {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			return addr, nil
		}
		select {
		case <-c.exited:
			return "", fmt.Errorf("the collector exited while starting (%s)", c.cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("the collector did not listen on %s within 30 s", addr)
		}
	}
}

func (c *collector) stop() {
	_ = c.cmd.Process.Kill()
	<-c.exited
}
