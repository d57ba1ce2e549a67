import Foundation
import OperandoBuffers
import OperandoCore
import Synchronization

/// A device's `RecordSink`: its streams' channels and its events channel. Used by the device's
/// own thread only (single producer for every channel it holds).
final class ChannelSink: RecordSink {
    let channels: [StreamChannel]
    let events: StreamChannel
    let clock: any HostClock
    private let encoder = JSONEncoder()

    init(channels: [StreamChannel], events: StreamChannel, clock: any HostClock) {
        self.channels = channels
        self.events = events
        self.clock = clock
        encoder.outputFormatting = .sortedKeys
    }

    @inline(__always)
    func push(stream: Int, hostTime: HostInstant, deviceTime: Int64?, payload: UnsafeRawBufferPointer) {
        channels[stream].push(hostTime: hostTime, deviceTime: deviceTime, payload: payload)
    }

    func event(_ event: Event) {
        EventEncoding.push(event, to: events, encoder: encoder)
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
