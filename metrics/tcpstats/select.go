package tcpstats

import (
	"container/heap"
	"slices"
	"time"
)

// selectBusiest ends the current interval: it measures what every flow
// acked and received in it and selects the TopFlows flows that moved the
// most (ties: the lower cookie). Within minSelectInterval of the previous
// selection it keeps that one; the flows closed since drop out when read.
func (a *Aggregator) selectBusiest() {
	now := time.Now()
	if !a.selectedAt.IsZero() && now.Sub(a.selectedAt) < minSelectInterval {
		return
	}
	a.selectedAt = now
	top := busiest{}
	for _, b := range a.backends {
		for _, f := range b.flows {
			moved := f.last[0] + f.last[1]
			f.interval, f.mark = moved-f.mark, moved
			if f.cgroup == nil {
				continue // not counted yet
			}
			if top.Len() < a.cfg.TopFlows {
				heap.Push(&top, f)
			} else if busier(f, top[0]) {
				top[0] = f
				heap.Fix(&top, 0)
			}
		}
	}
	for _, f := range a.selected {
		f.selected = false
		a.recycle(f)
	}
	for _, f := range top {
		f.selected = true
	}
	a.selected = append(a.selected[:0], top...)
	slices.SortFunc(a.selected, func(x, y *flowState) int {
		switch {
		case busier(x, y):
			return -1
		case busier(y, x):
			return 1
		}
		return 0
	})
}

// busier reports whether x moved more than y in the last interval.
func busier(x, y *flowState) bool {
	if x.interval != y.interval {
		return x.interval > y.interval
	}
	return x.cookie < y.cookie
}

// busiest is a min-heap of flows: its root is the least busy of the top.
type busiest []*flowState

func (h busiest) Len() int           { return len(h) }
func (h busiest) Less(i, j int) bool { return busier(h[j], h[i]) }
func (h busiest) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *busiest) Push(x any)        { *h = append(*h, x.(*flowState)) }
func (h *busiest) Pop() any {
	f := (*h)[len(*h)-1]
	*h = (*h)[:len(*h)-1]
	return f
}
