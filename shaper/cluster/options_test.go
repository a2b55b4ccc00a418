package cluster_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sluiceproxy/sluice/shaper/cluster"
)

func TestOptionsValidate(t *testing.T) {
	tests := []struct {
		name string
		o    cluster.Options
		want string // in the error; "" means valid
	}{
		{"address", cluster.Options{Addr: "127.0.0.1:6379"}, ""},
		{"sentinel", cluster.Options{Sentinel: &cluster.Sentinel{Master: "m", Addrs: []string{"127.0.0.1:26379"}}}, ""},
		{"client", cluster.Options{Client: redis.NewClient(&redis.Options{})}, ""},
		{"nothing", cluster.Options{}, "want an address or a sentinel"},
		{"both", cluster.Options{Addr: "h:1", Sentinel: &cluster.Sentinel{Master: "m", Addrs: []string{"h:2"}}}, "exclusive"},
		{"client and address", cluster.Options{Client: redis.NewClient(&redis.Options{}), Addr: "h:1"}, "must be empty"},
		{"no port", cluster.Options{Addr: "localhost"}, `redis.address: want host:port, got "localhost"`},
		{"bad port", cluster.Options{Addr: "h:99999"}, "redis.address"},
		{"no master", cluster.Options{Sentinel: &cluster.Sentinel{Addrs: []string{"h:1"}}}, "redis.sentinel.master"},
		{"no sentinels", cluster.Options{Sentinel: &cluster.Sentinel{Master: "m"}}, "redis.sentinel.addresses"},
		{"bad sentinel", cluster.Options{Sentinel: &cluster.Sentinel{Master: "m", Addrs: []string{"h:1", "h"}}}, "addresses[1]"},
		{"negative db", cluster.Options{Addr: "h:1", DB: -1}, "redis.db"},
		{"two passwords", cluster.Options{Addr: "h:1", Password: "x", PasswordFile: "f"}, "password_file are exclusive"},
		{"brace prefix", cluster.Options{Addr: "h:1", Prefix: "a{b"}, "prefix"},
		{"short period", cluster.Options{Addr: "h:1", Period: time.Millisecond}, "lease"},
		{"long timeout", cluster.Options{Addr: "h:1", Timeout: 80 * time.Millisecond}, "timeout"},
		{"default timeout too long", cluster.Options{Addr: "h:1", Period: 60 * time.Millisecond}, "timeout"},
		{"short expiry", cluster.Options{Addr: "h:1", Expiry: 150 * time.Millisecond}, "expiry"},
		{"big floor", cluster.Options{Addr: "h:1", Floor: 0.6}, "floor"},
		{"negative instances", cluster.Options{Addr: "h:1", Instances: -1}, "instances"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.o.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, cluster.ErrBadOptions)):
				t.Errorf("Validate() = %v, want an ErrBadOptions containing %q", err, tt.want)
			}
		})
	}
}

// TestPasswordFile: the password is read from a file; a wrong one leaves
// the instance in fallback, with the error in its status.
func TestPasswordFile(t *testing.T) {
	srv := startRedis(t, "--requirepass", "s3cret")
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	bad := filepath.Join(dir, "bad")
	os.WriteFile(good, []byte("s3cret\n"), 0o600)
	os.WriteFile(bad, []byte("nope\n"), 0o600)

	c := newInstance(t, srv.Addr(), "a", func(o *cluster.Options) { o.PasswordFile = good })
	join(t, c, "hk", 1, nil)
	eventually(t, 3*time.Second, "leased with the password", func() bool { return c.Status().State == cluster.Leased })

	w := newInstance(t, srv.Addr(), "b", func(o *cluster.Options) { o.PasswordFile = bad })
	join(t, w, "hk", 1, nil)
	eventually(t, 3*time.Second, "fallback with a wrong password", func() bool { return w.Status().State == cluster.Fallback })
	if err := w.Status().LastErr; err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Errorf("LastErr = %v, want WRONGPASS", err)
	}

	_, err := cluster.New(cluster.Options{Addr: srv.Addr(), PasswordFile: filepath.Join(dir, "missing")})
	if !errors.Is(err, cluster.ErrBadOptions) || !strings.Contains(err.Error(), "redis.password_file") {
		t.Errorf("New with a missing password file = %v, want ErrBadOptions naming redis.password_file", err)
	}
}

// TestSentinel: an instance finds the master through three sentinels,
// and takes leases again after the master dies and a replica is promoted.
func TestSentinel(t *testing.T) {
	if testing.Short() {
		t.Skip("failover takes a few seconds")
	}
	// The master sends the replica its first copy at once: by default
	// Redis waits 5 s (repl-diskless-sync-delay) for more replicas, the
	// whole of the wait for "replica in sync" below.
	master := startRedis(t, "--repl-diskless-sync-delay", "0")
	replica := startRedis(t, "--replicaof", "127.0.0.1", strconv.Itoa(master.port))
	var sentinels []string
	for range 3 {
		sentinels = append(sentinels, startSentinel(t, "sluice-master", master).Addr())
	}
	sl := &stateLog{}
	c := newInstance(t, "", "a", func(o *cluster.Options) {
		o.Addr = ""
		o.Sentinel = &cluster.Sentinel{Master: "sluice-master", Addrs: sentinels}
		o.OnState = sl.on
	})
	f := join(t, c, "hk", 1, nil)
	eventually(t, 5*time.Second, "leased through sentinel", func() bool { return c.Status().State == cluster.Leased })
	eventually(t, 5*time.Second, "whole line", func() bool { return f.share.Load() == line })
	// The replica must be in sync before the master dies, or it is not
	// a candidate.
	eventually(t, 5*time.Second, "replica in sync", func() bool {
		info, err := replica.client().Info(t.Context(), "replication").Result()
		return err == nil && strings.Contains(info, "master_link_status:up")
	})
	killed := time.Now()
	master.kill()
	eventually(t, 20*time.Second, "leased after failover", func() bool {
		_, ok := sl.first(cluster.Leased, killed)
		return ok && c.Status().State == cluster.Leased
	})
	at, _ := sl.first(cluster.Leased, killed)
	t.Logf("leased again %s after the master was killed; share %d", at.Sub(killed), f.share.Load())
	if got := f.share.Load(); got != line {
		t.Errorf("share after failover %d, want %d (alone, the last share)", got, line)
	}
}
