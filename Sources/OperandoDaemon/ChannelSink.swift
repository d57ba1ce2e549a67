import Foundation
import OperandoBuffers
import OperandoCore
import OperandoSync
import Synchronization

/// A device's `RecordSink`: its streams' channels, its events channel, and its clock channel
/// with the live clock model. Used by the device's own thread only (single producer for every
/// channel it holds).
final class ChannelSink: RecordSink {
    let channels: [StreamChannel]
    let events: StreamChannel
    /// Raw clock observations (`ClockObservation`), stored with the run for refits.
    let clockChannel: StreamChannel
    let liveClock: LiveDeviceClock
    let clockParameters: DeviceClockParameters
    let clock: any HostClock
    let device: String
    private let encoder = JSONEncoder()
    /// The least-delayed one-way stamp of the current 100 ms window, not yet stored.
    private var pendingStamp: OneWaySample?
    private var stampWindowStart: Int64?
    static let stampWindowNs: Int64 = 100_000_000

    init(device: String, channels: [StreamChannel], events: StreamChannel, clockChannel: StreamChannel, clockParameters: DeviceClockParameters, clock: any HostClock) {
        self.device = device
        self.channels = channels
        self.events = events
        self.clockChannel = clockChannel
        self.clock = clock
        self.clockParameters = clockParameters
        liveClock = LiveDeviceClock(parameters: clockParameters)
        encoder.outputFormatting = .sortedKeys
    }

    var allChannels: [StreamChannel] { channels + [events, clockChannel] }

    @inline(__always)
    func push(stream: Int, hostTime: HostInstant, deviceTime: Int64?, payload: UnsafeRawBufferPointer) {
        channels[stream].push(hostTime: hostTime, deviceTime: deviceTime, payload: payload)
    }

    /// Stamps the event on the common timeline before it is stored: a device time is mapped
    /// through the live clock model; a host-stamped stimulus gets the transport's latency spread.
    func event(_ event: Event) {
        var e = event
        if let d = e.deviceTime, let m = liveClock.map(deviceTime: d, receivedAt: e.hostTime) {
            e.hostTime = m.host
            e.uncertaintyNs = m.uncertaintyNs
        } else if e.deviceTime == nil, e.uncertaintyNs == nil, e.kind == .stimulus {
            e.uncertaintyNs = liveClock.hostStampUncertaintyNs
        }
        EventEncoding.push(e, to: events, encoder: encoder)
    }

    func clockExchange(hostBefore: HostInstant, deviceTime: Int64, hostAfter: HostInstant) {
        store(ClockObservation(kind: .bracketed, hostBefore: hostBefore, hostAfter: hostAfter, deviceTime: deviceTime))
        modelEvent(liveClock.observe(exchange: BracketedExchange(hostBefore: hostBefore, deviceTime: deviceTime, hostAfter: hostAfter)), at: hostAfter)
    }

    func clockStamp(deviceTime: Int64, arrival: HostInstant) {
        let sample = OneWaySample(deviceTime: deviceTime, hostArrival: arrival)
        if stampWindowStart.map({ arrival.nanoseconds - $0 >= Self.stampWindowNs }) ?? true {
            flushStamp()
            stampWindowStart = arrival.nanoseconds
        }
        if let p = pendingStamp, p.hostArrival.nanoseconds &- p.deviceTime <= arrival.nanoseconds &- deviceTime { return }
        pendingStamp = sample
    }

    /// Stores and feeds the pending one-way stamp (one per window: only the lower envelope counts).
    private func flushStamp() {
        guard let s = pendingStamp else { return }
        pendingStamp = nil
        store(ClockObservation(kind: .oneWay, hostBefore: s.hostArrival, hostAfter: s.hostArrival, deviceTime: s.deviceTime))
        modelEvent(liveClock.observe(stamp: s), at: s.hostArrival)
    }

    func roundTrip(sent: HostInstant, received: HostInstant) {
        store(ClockObservation(kind: .roundTrip, hostBefore: sent, hostAfter: received, deviceTime: nil))
        liveClock.observe(roundTrip: RoundTrip(sent: sent, received: received))
    }

    private func store(_ o: ClockObservation) {
        _ = o.withPayload { clockChannel.push(hostTime: o.hostAfter, deviceTime: o.deviceTime, payload: $0) }
    }

    /// A reset or rate change of the device clock is recorded as a state change.
    private func modelEvent(_ event: ClockModelEvent?, at time: HostInstant) {
        guard case .segmentStarted(let index, let reason, let deviceTime)? = event, index > 0 else { return }
        let what = reason == .reset ? "was reset (it jumped or went backwards)" : "changed rate"
        EventEncoding.push(
            Event(kind: .stateChange, source: device, hostTime: time, deviceTime: deviceTime,
                  message: "the clock of \(device) \(what); clock segment \(index) starts here",
                  values: ["clock_segment": .integer(Int64(index)), "reason": .string(reason.rawValue)]),
            to: events, encoder: encoder)
    }
}

enum EventEncoding {
    static func push(_ event: Event, to channel: StreamChannel, encoder: JSONEncoder) {
        guard let json = try? encoder.encode(event) else { return }
        _ = json.withUnsafeBytes { channel.push(kind: .event, hostTime: event.hostTime, deviceTime: event.deviceTime, payload: $0) }
    }
}

/// The daemon's own events (markers, run start/stop): many producers (control connections), so
/// pushes are serialised by a lock. Not a hot path.
final class DaemonEvents: Sendable {
    let channel: StreamChannel
    private let lock = Mutex<JSONEncoder>(JSONEncoder())

    init(channel: StreamChannel) { self.channel = channel }

    func record(_ event: Event) {
        lock.withLock { EventEncoding.push(event, to: channel, encoder: $0) }
    }
}
