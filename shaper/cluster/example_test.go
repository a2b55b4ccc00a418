package cluster_test

import (
	"fmt"

	"github.com/sluiceproxy/sluice/shaper/cluster"
)

func ExampleOptions_Validate() {
	o := cluster.Options{Addr: "127.0.0.1:6379", Sentinel: &cluster.Sentinel{Master: "mymaster"}}
	fmt.Println(o.Validate())
	o = cluster.Options{Addr: "redis.internal"}
	fmt.Println(o.Validate())
	// Output:
	// cluster: bad options: redis: address and sentinel are exclusive
	// cluster: bad options: redis.address: want host:port, got "redis.internal"
}
