// Command try runs sluice on examples/sluice.yaml in front of a small origin
// it starts itself, downloads a file through sluice, checks it byte for byte,
// and stops sluice with SIGTERM, showing sluice's log as it goes.
//
//	go build -o sluice ./cmd/sluice && go run ./examples/try
package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"
)

func main() {
	bin := flag.String("sluice", "./sluice", "sluice binary")
	cfg := flag.String("config", "examples/sluice.yaml", "sluice config: listener 127.0.0.1:8080 → upstream 127.0.0.1:8081")
	size := flag.Int("size", 64<<20, "bytes to download")
	flag.Parse()
	if err := run(*bin, *cfg, *size); err != nil {
		fmt.Fprintln(os.Stderr, "try:", err)
		os.Exit(1)
	}
}

func run(bin, cfg string, size int) error {
	// The origin: one pseudo-random file at /file.
	body := make([]byte, size)
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i+8 <= len(body); i += 8 {
		v := r.Uint64()
		for j := 0; j < 8; j++ {
			body[i+j] = byte(v >> (8 * j))
		}
	}
	want := sha256.Sum256(body)
	ln, err := net.Listen("tcp", "127.0.0.1:8081")
	if err != nil {
		return fmt.Errorf("origin: %w", err)
	}
	defer ln.Close()
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "file", time.Time{}, bytes.NewReader(body))
	}))
	fmt.Printf("origin on %s serving %d MiB at /file\n", ln.Addr(), size>>20)

	cmd := exec.Command(bin, "run", "--config", cfg)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start sluice (build it first: go build -o sluice ./cmd/sluice): %w", err)
	}
	defer cmd.Process.Kill()
	if err := waitListening("127.0.0.1:8080", 10*time.Second); err != nil {
		return err
	}

	start := time.Now()
	resp, err := http.Get("http://127.0.0.1:8080/file")
	if err != nil {
		return fmt.Errorf("fetch through sluice: %w", err)
	}
	h := sha256.New()
	n, err := io.Copy(h, resp.Body)
	resp.Body.Close()
	if err != nil {
		return fmt.Errorf("read through sluice: %w", err)
	}
	el := time.Since(start)
	got := [32]byte(h.Sum(nil))
	fmt.Printf("\nfetched %d bytes through sluice in %v: %.1f Mbit/s (the config's limit is 100Mbit); SHA-256 matches: %v\n\n",
		n, el.Round(time.Millisecond), float64(n)*8/el.Seconds()/1e6, got == want)
	if got != want {
		return errors.New("bytes changed in transit")
	}
	http.DefaultClient.CloseIdleConnections()

	fmt.Println("stopping sluice with SIGTERM (it drains live connections first)")
	cmd.Process.Signal(syscall.SIGTERM)
	return cmd.Wait()
}

func waitListening(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sluice not listening on %s after %v", addr, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
