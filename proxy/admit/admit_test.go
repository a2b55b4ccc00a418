package admit_test

import (
	"net/netip"
	"testing"
	"time"

	"github.com/sluiceproxy/sluice/proxy/admit"
)

type countHold struct{ n *int }

func (h countHold) Release() { *h.n++ }

func TestAllAdmits(t *testing.T) {
	c := admit.Conn{Listener: "web", Client: netip.MustParseAddrPort("127.0.0.2:4000")}
	d := admit.All.Admit(c, time.Unix(0, 0))
	if d.Verdict != admit.Admit || d.Reason != "" || d.Hold != nil {
		t.Fatalf("All.Admit = %+v, want admit, no reason, nothing held", d)
	}
	d.Release() // holds nothing: a no-op
}

func TestDecisionRelease(t *testing.T) {
	released := 0
	d := admit.Decision{Hold: countHold{&released}}
	d.Release()
	if released != 1 {
		t.Fatalf("Release released %d holds, want 1", released)
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
