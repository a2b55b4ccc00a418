package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAdmin(t *testing.T) {
	t.Setenv(AdminTokenEnv, "") // the test sets it where it wants it
	os.Unsetenv(AdminTokenEnv)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("  s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := Parse([]byte(oneListener))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Admin != (Admin{Listen: DefaultAdminListen}) || !cfg.Admin.Enabled() {
		t.Errorf("default admin = %+v, want loopback %s and no token", cfg.Admin, DefaultAdminListen)
	}
	cfg, err = Parse([]byte("admin: {listen: off}\n" + oneListener))
	if err != nil || cfg.Admin.Enabled() {
		t.Errorf("admin.listen off: %+v, %v; want disabled", cfg.Admin, err)
	}
	cfg, err = Parse([]byte("admin: {listen: '0.0.0.0:9901', token_file: '" + tokenFile + "'}\n" + oneListener))
	if err != nil || cfg.Admin.Token != "s3cret" {
		t.Errorf("token file: %+v, %v; want token s3cret (trimmed)", cfg.Admin, err)
	}
	out, _ := cfg.YAML()
	if strings.Contains(string(out), "s3cret") {
		t.Errorf("check prints the token:\n%s", out)
	}
	t.Setenv("CREDENTIALS_DIRECTORY", dir)
	cfg, err = Parse([]byte("admin: {token_file: '${CREDENTIALS_DIRECTORY}/token'}\n" + oneListener))
	if err != nil || cfg.Admin.Token != "s3cret" {
		t.Errorf("token file in $CREDENTIALS_DIRECTORY: %+v, %v", cfg.Admin, err)
	}
	t.Setenv(AdminTokenEnv, "fromenv")
	cfg, err = Parse([]byte("admin: {listen: '0.0.0.0:9901'}\n" + oneListener))
	if err != nil || cfg.Admin.Token != "fromenv" {
		t.Errorf("token from %s: %+v, %v", AdminTokenEnv, cfg.Admin, err)
	}
}

func TestAdminErrors(t *testing.T) {
	t.Setenv(AdminTokenEnv, "")
	os.Unsetenv(AdminTokenEnv)
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, []byte(strings.Repeat("x", MaxTokenLen+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, yaml, want string }{
		{"public without token", "admin: {listen: '0.0.0.0:9901'}", `admin.listen: "0.0.0.0:9901" is not a loopback address: set admin.token_file`},
		{"all addresses without token", "admin: {listen: ':9901'}", `admin.listen: ":9901" is not a loopback address`},
		{"bad address", "admin: {listen: 'localhost'}", `admin.listen: want "host:port"`},
		{"missing token file", "admin: {token_file: '" + filepath.Join(dir, "nope") + "'}", "admin.token_file: open "},
		{"empty token file", "admin: {token_file: '" + empty + "'}", "admin.token_file: " + empty + " is empty"},
		{"token file too long", "admin: {token_file: '" + big + "'}", "longer than 4096 bytes"},
		{"unknown key", "admin: {port: 9901}", "admin.port: unknown key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml + "\n" + oneListener))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
	t.Run("empty env token", func(t *testing.T) {
		t.Setenv(AdminTokenEnv, " ")
		if _, err := Parse([]byte(oneListener)); err == nil || !strings.Contains(err.Error(), AdminTokenEnv+": set but empty") {
			t.Fatalf("Parse error = %v, want it to name %s", err, AdminTokenEnv)
		}
	})
}
