package config

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
)

// Admin configures the admin HTTP API (/metrics, /healthz, /readyz, /v1/...).
type Admin struct {
	// Listen is the admin address, "host:port". Default DefaultAdminListen
	// (loopback); "off" disables the admin API.
	Listen string
	// TokenFile holds the bearer token that state-changing calls need (its
	// content, surrounding white space trimmed). "${CREDENTIALS_DIRECTORY}"
	// in it is expanded, for systemd's LoadCredential=. The SLUICE_ADMIN_TOKEN
	// environment variable, when set, is used instead. A non-loopback
	// Listen requires a token.
	TokenFile string
	// Token is the token read from TokenFile or SLUICE_ADMIN_TOKEN; empty
	// when none is set. It is never printed.
	Token string
}

// Enabled reports whether the admin API listens at all.
func (a Admin) Enabled() bool { return a.Listen != "" }

// Admin defaults.
const (
	DefaultAdminListen = "127.0.0.1:9901"
	// MaxTokenLen bounds the admin token file.
	MaxTokenLen = 4096
)

// AdminTokenEnv names the environment variable that carries the admin token.
const AdminTokenEnv = EnvPrefix + "_ADMIN_TOKEN"

// admin reads {listen, token_file} and the token itself.
func (d *decoder) admin(v any) Admin {
	m := d.object("admin", v, "listen", "token_file")
	var a Admin
	if s, ok := m["listen"].(string); ok && s == "off" {
		a.Listen = ""
	} else {
		a.Listen = d.hostPort("admin.listen", orDefault(m["listen"], DefaultAdminListen), true)
	}
	a.TokenFile = d.str("admin.token_file", m["token_file"], "")
	if a.TokenFile != "" {
		tok, err := readToken(expandCredentials(a.TokenFile))
		if err != nil {
			d.failf("admin.token_file", "%v", err)
		}
		a.Token = tok
	}
	if env, ok := os.LookupEnv(AdminTokenEnv); ok {
		if a.Token = strings.TrimSpace(env); a.Token == "" {
			d.failf(AdminTokenEnv, "set but empty: want the admin token, or unset it")
		}
	}
	if a.Listen != "" && a.Token == "" && !isLoopback(a.Listen) {
		d.failf("admin.listen", "%q is not a loopback address: set admin.token_file (or %s) so only holders of the token can use it, or listen on 127.0.0.1", a.Listen, AdminTokenEnv)
	}
	return a
}

// expandCredentials replaces ${CREDENTIALS_DIRECTORY} in a path with the
// directory systemd's LoadCredential= puts secrets in; nothing else is
// expanded.
func expandCredentials(path string) string {
	return os.Expand(path, func(name string) string {
		if name == "CREDENTIALS_DIRECTORY" {
			return os.Getenv(name)
		}
		return "$" + name
	})
}

// readToken reads a token file: at most MaxTokenLen bytes, white space
// trimmed, not empty.
func readToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, MaxTokenLen+1))
	if err != nil {
		return "", err
	}
	if len(b) > MaxTokenLen {
		return "", fmt.Errorf("%s: longer than %d bytes: want a token file, like 32 random hex characters", path, MaxTokenLen)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("%s is empty: want the admin token", path)
	}
	return tok, nil
}

// isLoopback reports whether a listen address only accepts local peers:
// a loopback IP or "localhost". An empty host means every address.
func isLoopback(hostPort string) bool {
	host, _, err := net.SplitHostPort(hostPort)
	if err != nil || host == "" {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
