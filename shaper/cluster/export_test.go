package cluster

// Crash stops c's renewals and ban traffic without the goodbye of Close,
// as if the process had died.
func Crash(c *Cluster) {
	c.cancel()
	c.wg.Wait()
	c.bans.close()
}
