package admit_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/proxy/admit"
)

func TestAllAdmits(t *testing.T) {
	c := admit.Conn{Listener: "web", Client: netip.MustParseAddrPort("127.0.0.2:4000")}
	d := admit.All.Admit(c, time.Unix(0, 0))
	if d.Verdict != admit.Admit || d.Reason != "" || !d.Hold.IsZero() {
		t.Fatalf("All.Admit = %+v, want admit, no reason, nothing held", d)
	}
	d.Release() // holds nothing: a no-op
}

// TestReleaseOnce: a Hold gives back its slot once, however many copies
// are released, and a stale copy cannot give back the slot of a later
// connection that reuses its record.
func TestReleaseOnce(t *testing.T) {
	s, err := admit.NewSet(admit.Rules{Limits: []admit.Limit{{Name: "c", Conns: 2}}}, admit.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.Policy(admit.PolicyConfig{Limits: []string{"c"}})
	if err != nil {
		t.Fatal(err)
	}
	c := admit.Conn{Client: netip.MustParseAddrPort("192.0.2.1:4000")}
	now := time.Unix(0, 0)
	first := p.Admit(c, now)
	copied := first
	first.Release()
	copied.Release()
	first.Release()
	a, b := p.Admit(c, now), p.Admit(c, now)
	first.Release() // stale: must not free a or b's slot
	if d := p.Admit(c, now); d.Verdict != admit.Refuse || d.Reason != "conns" {
		t.Fatalf("third connection with two held: %+v, want refused on conns", d)
	}
	a.Release()
	b.Release()
	if d := p.Admit(c, now); d.Verdict != admit.Admit {
		t.Fatalf("after both released: %+v, want admitted", d)
	}
}

func TestVerdictString(t *testing.T) {
	for _, c := range []struct {
		name string
		v    admit.Verdict
		want string
	}{{"admit", admit.Admit, "admit"}, {"refuse", admit.Refuse, "refuse"}} {
		t.Run(c.name, func(t *testing.T) {
			if got := c.v.String(); got != c.want {
				t.Errorf("String() = %q, want %q", got, c.want)
			}
		})
	}
}
