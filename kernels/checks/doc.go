// Package checks holds privileged end-to-end checks that span packages and
// that the kernel matrix (make test-kernels) runs on every kernel it boots,
// besides the packages' own tests. They run on the host with `make test`
// too.
package checks
