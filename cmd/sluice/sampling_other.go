//go:build !linux

package main

import (
	"os"
	"syscall"
)

// Elsewhere the core governor's samples use the syscall package and the os
// package's directory listing; its run delay needs Linux's
// /proc/self/task, so there the listing fails and only CPU time counts.

func getrusageSelf(ru *syscall.Rusage) error { return syscall.Getrusage(syscall.RUSAGE_SELF, ru) }

func openRead(path string) (int, error) {
	return syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
}

func preadAt0(fd int, b []byte) (int, error) { return syscall.Pread(fd, b, 0) }

func closeFD(fd int) { _ = syscall.Close(fd) }

func dirNames(_ int, path string, _ []byte, names []string) ([]string, error) {
	d, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	all, err := d.Readdirnames(-1)
	return append(names[:0], all...), err
}
