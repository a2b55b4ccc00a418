package config

import (
	"strings"
	"testing"
)

func TestDiff(t *testing.T) {
	old, err := Parse([]byte(`
upstreams:
  api: {servers: ['h:1', 'h:2']}
  old: {servers: ['h:5']}
listeners:
  - {name: a, listen: ':1', upstream: 'h:1', conn: {down: {rate: 10Mbit}}}
  - {name: b, listen: ':2', upstream: 'h:1'}
`))
	if err != nil {
		t.Fatal(err)
	}
	next, err := Parse([]byte(`
log: {level: debug}
upstreams:
  api: {servers: ['h:1', 'h:2'], retry: 1}
  new: {servers: ['h:6']}
listeners:
  - {name: a, listen: ':1', upstream: 'h:2', conn: {down: {rate: 20Mbit}}}
  - {name: c, listen: ':3', upstream: 'h:1'}
`))
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(Diff(old, next), "\n")
	want := strings.Join([]string{
		"log.level info → debug",
		"upstream old removed",
		"upstream api: retry 0 → 1",
		"upstream new added",
		"listener b removed",
		"listener a: upstream h:1 → h:2",
		"listener a: conn.down.rate 10Mbit → 20Mbit",
		"listener c added",
	}, "\n")
	if got != want {
		t.Errorf("Diff =\n%s\nwant\n%s", got, want)
	}
	if d := Diff(old, old); len(d) != 0 {
		t.Errorf("Diff(old, old) = %q, want nothing", d)
	}
}
