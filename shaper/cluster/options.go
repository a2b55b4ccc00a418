package cluster

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/sluiceproxy/sluice/shaper"
)

// ErrBadOptions is wrapped by the errors of [Options.Validate] and [New].
var ErrBadOptions = errors.New("cluster: bad options")

// Defaults of [Options].
const (
	DefaultPeriod  = 100 * time.Millisecond
	DefaultTimeout = 50 * time.Millisecond
	DefaultPrefix  = "sluice"
	DefaultFloor   = 0.01
	// DefaultExpiryPeriods is how many periods an instance's entries live
	// without renewal.
	DefaultExpiryPeriods = 3
)

// Sentinel names a Redis master watched by Sentinel.
type Sentinel struct {
	// Master is the name the sentinels know the master by ("mymaster").
	Master string
	// Addrs are the sentinels' host:port addresses; at least one.
	Addrs []string
	// Password authenticates to the sentinels; empty means none.
	Password string
}

// Options configure a [Cluster]. The zero value is not usable: it needs
// Addr, Sentinel or Client.
type Options struct {
	// Client, if set, is used as is, and Addr, Sentinel, DB, Username,
	// Password, PasswordFile and TLS must be empty. The Cluster does not
	// close it. Its timeouts and retries are the caller's business: give
	// it short ones (see [DefaultTimeout]) and no retries, or a slow Redis
	// delays renewals past the period.
	Client redis.UniversalClient

	// Addr is the host:port of one Redis server. Exclusive with Sentinel.
	Addr string
	// Sentinel, if set, finds the master through Sentinel and follows
	// its failovers. Exclusive with Addr.
	Sentinel *Sentinel
	// DB is the Redis database number; 0 is the default database.
	DB int
	// Username for Redis ACLs; empty means the default user.
	Username string
	// Password for Redis; empty means none. Exclusive with PasswordFile.
	Password string
	// PasswordFile names a file whose content (trailing newlines cut) is
	// the password. It is read once, by [New].
	PasswordFile string
	// TLS, if set, connects with TLS under this configuration.
	TLS *tls.Config

	// Prefix names this cluster's keys in Redis; several clusters may
	// share a Redis server under different prefixes. Empty means
	// [DefaultPrefix]. Every key is hash-tagged "{Prefix}", so all of a
	// cluster's keys live in one Redis Cluster slot and one script call
	// covers them all.
	Prefix string
	// Instance identifies this instance among the cluster's; it must be
	// unique and stable over the process's life. Empty means
	// "hostname-pid".
	Instance string

	// Period is the lease period: an instance renews all its leases and
	// flushes its counters once per Period, in one Redis call. Zero means
	// [DefaultPeriod]; it must be within [10ms, 10s].
	Period time.Duration
	// Timeout bounds each Redis call and dial. Zero means
	// [DefaultTimeout]; it must be at most Period / 2.
	Timeout time.Duration
	// Expiry is how long an instance's leases and counts live in Redis
	// without renewal before the others take them back. Zero means
	// [DefaultExpiryPeriods] × Period; it must be at least 2 × Period.
	Expiry time.Duration
	// Floor is the part of a link's line every live instance keeps, idle
	// or not, so that a new connection on an idle instance starts at
	// once. Zero means [DefaultFloor] (1%); it must be within [0, 0.5].
	// Negative means no floor (an idle instance is left 1 byte/s).
	Floor float64
	// Instances is the number of instances expected, for the static
	// fallback share of a link that never had a lease (Line / Instances).
	// Zero means 1: without it an instance that starts while Redis is
	// down takes the whole line.
	Instances int

	// Clock schedules renewals and timestamps the status; nil means the
	// real clock. Redis times leases by its own clock (TIME), so the
	// instances' clocks need not agree.
	Clock shaper.Clock
	// Logger receives one line on entering and one on leaving fallback,
	// and errors of the ban subscription; nil discards.
	Logger *slog.Logger
	// OnState, if set, is called from the renewal goroutine on every
	// change of [State]. It must not block.
	OnState func(State)
}

// Validate reports whether o is usable. Its errors wrap [ErrBadOptions]
// and name the field. It does not read PasswordFile.
func (o *Options) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrBadOptions}, args...)...)
	}
	switch {
	case o.Client != nil:
		if o.Addr != "" || o.Sentinel != nil || o.DB != 0 || o.Username != "" || o.Password != "" || o.PasswordFile != "" || o.TLS != nil {
			return bad("client: connection fields must be empty when a client is given")
		}
	case o.Addr != "" && o.Sentinel != nil:
		return bad("redis: address and sentinel are exclusive")
	case o.Addr == "" && o.Sentinel == nil:
		return bad("redis: want an address or a sentinel")
	case o.Addr != "":
		if err := checkHostPort(o.Addr); err != nil {
			return bad("redis.address: %w", err)
		}
	default:
		if o.Sentinel.Master == "" {
			return bad("redis.sentinel.master: want the master's name")
		}
		if len(o.Sentinel.Addrs) == 0 {
			return bad("redis.sentinel.addresses: want at least one sentinel")
		}
		for i, a := range o.Sentinel.Addrs {
			if err := checkHostPort(a); err != nil {
				return bad("redis.sentinel.addresses[%d]: %w", i, err)
			}
		}
	}
	if o.DB < 0 {
		return bad("redis.db: want 0 or more, got %d", o.DB)
	}
	if o.Password != "" && o.PasswordFile != "" {
		return bad("redis: password and password_file are exclusive")
	}
	if strings.ContainsAny(o.Prefix, "{}") {
		return bad("prefix: must not contain braces, got %q", o.Prefix)
	}
	if strings.ContainsAny(o.Instance, " \t\r\n") {
		return bad("instance: must not contain spaces, got %q", o.Instance)
	}
	p := o.Period
	if p == 0 {
		p = DefaultPeriod
	}
	if p < 10*time.Millisecond || p > 10*time.Second {
		return bad("lease: want a period within [10ms, 10s], got %s", p)
	}
	if o.Timeout < 0 || o.Timeout > p/2 {
		return bad("timeout: want a positive timeout of at most half the period %s, got %s", p, o.Timeout)
	}
	if o.Timeout == 0 && DefaultTimeout > p/2 {
		return bad("timeout: the default %s is above half the period %s: set one", DefaultTimeout, p)
	}
	if o.Expiry != 0 && o.Expiry < 2*p {
		return bad("expiry: want at least two periods (%s), got %s", 2*p, o.Expiry)
	}
	if o.Floor > 0.5 {
		return bad("floor: want a fraction within [0, 0.5], got %g", o.Floor)
	}
	if o.Instances < 0 {
		return bad("instances: want 0 or more, got %d", o.Instances)
	}
	return nil
}

func checkHostPort(a string) error {
	i := strings.LastIndexByte(a, ':')
	if i <= 0 {
		return fmt.Errorf("want host:port, got %q", a)
	}
	port, err := strconv.Atoi(a[i+1:])
	if err != nil || port <= 0 || port > 65535 {
		return fmt.Errorf("want host:port with a port in [1, 65535], got %q", a)
	}
	return nil
}

// normalized returns o with its defaults filled in, o.Validate() having
// passed.
func (o Options) normalized() Options {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Instance == "" {
		host, _ := os.Hostname()
		if host == "" {
			host = "sluice"
		}
		o.Instance = fmt.Sprintf("%s-%d", strings.ReplaceAll(host, " ", "_"), os.Getpid())
	}
	if o.Period == 0 {
		o.Period = DefaultPeriod
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Expiry == 0 {
		o.Expiry = DefaultExpiryPeriods * o.Period
	}
	switch {
	case o.Floor == 0:
		o.Floor = DefaultFloor
	case o.Floor < 0:
		o.Floor = 0
	}
	if o.Instances == 0 {
		o.Instances = 1
	}
	if o.Clock == nil {
		o.Clock = shaper.RealClock()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// readPassword returns o's password, reading PasswordFile if set.
func (o *Options) readPassword() (string, error) {
	if o.PasswordFile == "" {
		return o.Password, nil
	}
	b, err := os.ReadFile(o.PasswordFile)
	if err != nil {
		return "", fmt.Errorf("%w: redis.password_file: %w", ErrBadOptions, err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// newClient makes the Redis client of o (o normalized): short timeouts,
// no retries, a small pool, nothing sent on connect but the auth and
// database selection.
func (o *Options) newClient(password string) redis.UniversalClient {
	maint := &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
	if o.Sentinel != nil {
		return redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName:            o.Sentinel.Master,
			SentinelAddrs:         o.Sentinel.Addrs,
			SentinelPassword:      o.Sentinel.Password,
			Username:              o.Username,
			Password:              password,
			DB:                    o.DB,
			TLSConfig:             o.TLS,
			Protocol:              2,
			DialTimeout:           o.Timeout,
			ReadTimeout:           o.Timeout,
			WriteTimeout:          o.Timeout,
			PoolTimeout:           o.Timeout,
			ContextTimeoutEnabled: true,
			MaxRetries:            -1,
			PoolSize:              4,
			DisableIdentity:       true,
		})
	}
	return redis.NewClient(&redis.Options{
		Addr:                     o.Addr,
		Username:                 o.Username,
		Password:                 password,
		DB:                       o.DB,
		TLSConfig:                o.TLS,
		Protocol:                 2,
		DialTimeout:              o.Timeout,
		DialerRetries:            1,
		ReadTimeout:              o.Timeout,
		WriteTimeout:             o.Timeout,
		PoolTimeout:              o.Timeout,
		ContextTimeoutEnabled:    true,
		MaxRetries:               -1,
		PoolSize:                 4,
		DisableIdentity:          true,
		MaintNotificationsConfig: maint,
	})
}
