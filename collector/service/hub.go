package service

import (
	"sync"

	custodyv1 "github.com/custodyhq/custody/proto/custody/v1"
)

// hub is the collector's in-memory switchboard: which agents have a live
// session (so a task reaches them the moment it is created) and who is
// waiting to hear that a collection changed.
type hub struct {
	mu       sync.Mutex
	sessions map[string]*liveSession
	watchers map[string]chan struct{}
}

type liveSession struct {
	tasks chan *custodyv1.Task
	done  chan struct{}
	once  sync.Once
	why   error // set before done is closed by end
}

func (s *liveSession) close() { s.once.Do(func() { close(s.done) }) }

// end closes the session with a reason the agent is told.
func (s *liveSession) end(why error) {
	s.once.Do(func() {
		s.why = why
		close(s.done)
	})
}

func newHub() *hub {
	return &hub{sessions: map[string]*liveSession{}, watchers: map[string]chan struct{}{}}
}

// attach registers a new session for agentID, ending any older one: an
// agent that reconnects is the same agent, and the old stream is dead.
func (h *hub) attach(agentID string) *liveSession {
	s := &liveSession{tasks: make(chan *custodyv1.Task, 64), done: make(chan struct{})}
	h.mu.Lock()
	old := h.sessions[agentID]
	h.sessions[agentID] = s
	h.mu.Unlock()
	if old != nil {
		old.close()
	}
	return s
}

// detach removes s if it is still agentID's current session.
func (h *hub) detach(agentID string, s *liveSession) {
	h.mu.Lock()
	if h.sessions[agentID] == s {
		delete(h.sessions, agentID)
	}
	h.mu.Unlock()
	s.close()
}

// end closes agentID's live session, if any, telling it why.
func (h *hub) end(agentID string, why error) {
	h.mu.Lock()
	s := h.sessions[agentID]
	h.mu.Unlock()
	if s != nil {
		s.end(why)
	}
}

func (h *hub) connected(agentID string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessions[agentID] != nil
}

// push hands a task to the agent's live session; false if it has none (the
// task stays pending and is delivered when the agent says hello).
func (h *hub) push(agentID string, t *custodyv1.Task) bool {
	h.mu.Lock()
	s := h.sessions[agentID]
	h.mu.Unlock()
	if s == nil {
		return false
	}
	select {
	case s.tasks <- t:
		return true
	case <-s.done:
		return false
	default:
		// A full queue means a stuck session; the task is delivered from
		// the database on the next hello.
		return false
	}
}

// watch returns a channel closed at the next change of collection id.
func (h *hub) watch(id string) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	ch, ok := h.watchers[id]
	if !ok {
		ch = make(chan struct{})
		h.watchers[id] = ch
	}
	return ch
}

// changed wakes everyone watching collection id.
func (h *hub) changed(id string) {
	h.mu.Lock()
	ch, ok := h.watchers[id]
	delete(h.watchers, id)
	h.mu.Unlock()
	if ok {
		close(ch)
	}
}
