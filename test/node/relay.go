package node

import (
	"fmt"
	"io"
	"net"
)

// Relay forwards every TCP connection to listen (an address inside the
// node's namespace) to target, byte for byte, until the returned function
// is called.
func Relay(listen, target string) (func(), error) {
	l, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("relay %s → %s: %w", listen, target, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go forward(c, target)
		}
	}()
	return func() { l.Close() }, nil
}

func forward(c net.Conn, target string) {
	defer c.Close()
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer u.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(u, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, u); done <- struct{}{} }()
	<-done
}
