"""The agents' queues are cleared when the flow resumes after a suspension, never by a
resume of a running flow (streams.flow_control)."""

from __future__ import annotations

from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams.flow_control import ResumeOnceFlowControl


def queue_of(flow: FlowControlEvent) -> FlowControlQueue[str]:
    return FlowControlQueue(flow_control=flow, clear_on_resume=True)


async def test_a_second_resume_keeps_the_records_handed_out_since_the_first() -> None:
    """Faust resumes after the recovery and again after the seek; records handed out
    between the two were cleared, read and never processed."""
    flow = ResumeOnceFlowControl()
    queue = queue_of(flow)
    flow.resume()  # the recovery had nothing to read
    queue.put_nowait("inbound[1]@234")  # handed out by the fetch loop meanwhile
    flow.resume()  # after the seek of the stream partitions
    assert queue.qsize() == 1
    assert flow.is_active()


async def test_a_resume_after_a_suspension_clears_what_was_read_before_it() -> None:
    flow = ResumeOnceFlowControl()
    flow.resume()
    queue = queue_of(flow)
    queue.put_nowait("read before the rebalance")
    flow.suspend()  # a rebalance: the records are read again after the seek
    assert not flow.is_active()
    flow.resume()
    assert queue.qsize() == 0
    assert flow.is_active()
