package cluster_test

import (
	"context"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"
)

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func TestMain(m *testing.M) {
	// go-redis logs failed dials process-wide; the fault tests make many.
	redis.SetLogger(quietLogger{})
	os.Exit(m.Run())
}
