// dnsprobe is the cluster end-to-end tests' pod: it resolves each name given on its command line
// through the pod's /etc/resolv.conf (the cluster DNS, with the kubelet's search domains) until
// all of them resolve or it gives up, prints one line saying which, and then stays up for an
// hour so that the pod stays Running while the test reads its log. Bounded: 60 rounds 2 s
// apart, each lookup at most 5 s.
package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strings"
	"time"
)

func main() {
	names := os.Args[1:]
	if len(names) == 0 {
		fmt.Println("DNSPROBE-FAIL no names given")
		os.Exit(2)
	}
	var last error
	for round := 1; round <= 60; round++ {
		var got []string
		last = nil
		for _, n := range names {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			addrs, err := net.DefaultResolver.LookupHost(ctx, n)
			cancel()
			if err != nil {
				last = err
				break
			}
			sort.Strings(addrs)
			got = append(got, n+"="+strings.Join(addrs, ","))
		}
		if last == nil {
			fmt.Printf("DNSPROBE-OK round=%d %s\n", round, strings.Join(got, " "))
			time.Sleep(time.Hour)
			return
		}
		fmt.Printf("DNSPROBE-RETRY round=%d err=%q\n", round, last.Error())
		time.Sleep(2 * time.Second)
	}
	fmt.Printf("DNSPROBE-FAIL err=%q\n", last.Error())
	time.Sleep(time.Hour)
}
