// Package deploy holds what an operator needs to run pe serve on many
// machines: haproxy.cfg (HAProxy in front of N workers), prometheus.yml
// and a guide (README.md). It has no code of its own; its test starts
// that very HAProxy configuration in front of three pe serve workers on
// loopback, sharing images through a versitygw bucket, and checks what
// the guide claims: bursts answered, a killed worker left out, rolling
// restarts without a failed request, unhealthy workers taken out.
package deploy
