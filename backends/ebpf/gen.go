package ebpf

//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror -mcpu=v3" -target bpfel -type flowd_record -type flowd_head -type flowd_tcp_info -type flowd_cidr_key -type flowd_event -type flowd_field -type flowd_record_flag bpf ../../bpf/flowd.bpf.c -- -I../../bpf

// The synthetic producer the benchmarks feed the ring buffer with.
//go:generate go tool bpf2go -cc clang-19 -cflags "-O2 -g -Wall -Werror" -target bpfel -go-package producer -output-dir internal/producer producer ../../bpf/bench_producer.bpf.c -- -I../../bpf
