package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/sluiceproxy/sluice/config"
)

// adminClient calls a running sluice's admin API.
type adminClient struct {
	base  string // "http://127.0.0.1:9901"
	token string
	http  *http.Client
}

// adminFlags are the flags of commands that talk to a running sluice.
type adminFlags struct {
	config    string
	admin     string
	tokenFile string
}

// client resolves the admin address and token: --admin and --token-file
// win; otherwise they come from the config file (admin.listen,
// admin.token_file) and SLUICE_ADMIN_TOKEN.
func (f *adminFlags) client() (*adminClient, error) {
	c := &adminClient{http: &http.Client{Timeout: 10 * time.Second}}
	addr := f.admin
	if f.tokenFile != "" {
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, configError{fmt.Errorf("--token-file: %w", err)}
		}
		c.token = strings.TrimSpace(string(b))
	} else if tok, ok := os.LookupEnv(config.AdminTokenEnv); ok {
		c.token = strings.TrimSpace(tok)
	}
	if addr == "" || (c.token == "" && f.tokenFile == "") {
		cfg, err := config.Load(f.config)
		if err != nil {
			if addr != "" {
				// The config only supplied a token; go without one.
				cfg = &config.Config{}
			} else {
				return nil, configError{fmt.Errorf("find the admin API: config %s: %w (or pass --admin)", f.config, err)}
			}
		}
		if addr == "" {
			if !cfg.Admin.Enabled() {
				return nil, configError{fmt.Errorf("config %s turns the admin API off (admin.listen: off)", f.config)}
			}
			addr = cfg.Admin.Listen
		}
		if c.token == "" {
			c.token = cfg.Admin.Token
		}
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	c.base = strings.TrimRight(addr, "/")
	return c, nil
}

// do sends a request and decodes a JSON answer into out (if not nil). An
// answer that is not 2xx becomes an error carrying the API's message.
func (c *adminClient) do(ctx context.Context, method, path string, body io.Reader, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("admin API at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error string }
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, e.Error)
		}
		return fmt.Errorf("%s %s: %s", method, path, resp.Status)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("%s %s: bad answer: %w", method, path, err)
	}
	return nil
}

var errNoToken = errors.New("no admin token: set admin.token_file in the config, SLUICE_ADMIN_TOKEN, or --token-file")
