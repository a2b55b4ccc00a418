package main

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The core governor's samples are made with raw system calls, not through
// syscall.Syscall: every call entered that way while sluice is quiet wakes
// the Go runtime's sysmon thread, which then polls every 20 µs until the
// process is idle again, and on a VM each of those wake-ups costs more than
// the sample (docs/operating.md#cores). None of these calls can block: they
// read /proc files that are already open, or open one.

// getrusageSelf is getrusage(RUSAGE_SELF).
func getrusageSelf(ru *syscall.Rusage) error {
	if _, _, e := syscall.RawSyscall(syscall.SYS_GETRUSAGE, syscall.RUSAGE_SELF, uintptr(unsafe.Pointer(ru)), 0); e != 0 {
		return e
	}
	return nil
}

// openRead opens path read-only, close-on-exec.
func openRead(path string) (int, error) {
	p, err := syscall.BytePtrFromString(path)
	if err != nil {
		return -1, err
	}
	dirfd := unix.AT_FDCWD
	fd, _, e := syscall.RawSyscall6(syscall.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), syscall.O_RDONLY|syscall.O_CLOEXEC, 0, 0, 0)
	if e != 0 {
		return -1, e
	}
	return int(fd), nil
}

// preadAt0 reads from fd at offset 0 into b.
func preadAt0(fd int, b []byte) (int, error) {
	n, _, e := syscall.RawSyscall6(syscall.SYS_PREAD64, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), 0, 0, 0)
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// closeFD closes fd.
func closeFD(fd int) { _, _, _ = syscall.RawSyscall(syscall.SYS_CLOSE, uintptr(fd), 0, 0) }

// dirNames lists the directory open as fd (path) from its start, into
// names[:0], with buf for the kernel's entries.
func dirNames(fd int, _ string, buf []byte, names []string) ([]string, error) {
	if _, _, e := syscall.RawSyscall(syscall.SYS_LSEEK, uintptr(fd), 0, 0); e != 0 {
		return nil, e
	}
	names = names[:0]
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_GETDENTS64, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(buf))), uintptr(len(buf)))
		if e != 0 {
			return nil, e
		}
		if n == 0 {
			return names, nil
		}
		_, _, names = syscall.ParseDirent(buf[:n], -1, names)
	}
}
