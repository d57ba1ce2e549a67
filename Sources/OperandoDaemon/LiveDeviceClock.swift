import OperandoControl
import OperandoCore
import OperandoSync
import Synchronization

/// The live clock model of one device, fed on the device's thread by its sink.
///
/// Which model maps the device's timestamps: the bracketed model once the driver has made one
/// bracketed query (a symmetric bracket bounds the error both ways), the one-way model when
/// the device only stamps what it sends, and the host-stamped model (latency spread of the
/// round trips) for a device without a clock. The control thread reads a published summary.
final class LiveDeviceClock: @unchecked Sendable {
    private var bracketed: BracketedClockModel
    private var oneWay: OneWayClockModel
    private var hostStamped = HostStampedModel(capacity: 256)
    private var exchanges: UInt64 = 0
    private var stamps: UInt64 = 0
    private var roundTrips: UInt64 = 0
    private var latest: (device: Int64, arrival: HostInstant)?
    private var lastPublished: Int64?
    private let published = Mutex(DeviceClockInfo(model: "none", observations: 0, segments: 0, offsetNs: nil, driftPPM: nil, uncertaintyNs: nil))

    init(parameters: DeviceClockParameters) {
        bracketed = BracketedClockModel(configuration: parameters.bracketed)
        oneWay = OneWayClockModel(configuration: parameters.oneWay)
    }

    /// The model that maps this device's timestamps now.
    var model: String {
        if exchanges > 0 { return "bracketed" }
        if stamps > 0 { return "one-way" }
        if roundTrips > 0 { return "host-stamped" }
        return "none"
    }

    func observe(exchange e: BracketedExchange) -> ClockModelEvent? {
        exchanges += 1
        latest = (e.deviceTime, e.hostAfter)
        let event = bracketed.observe(e)
        publish(at: e.hostAfter, force: event != nil)
        return event
    }

    /// One-way stamps are ignored for mapping once the device answers bracketed queries.
    func observe(stamp s: OneWaySample) -> ClockModelEvent? {
        stamps += 1
        guard exchanges == 0 else { return nil }
        latest = (s.deviceTime, s.hostArrival)
        let event = oneWay.observe(s)
        publish(at: s.hostArrival, force: event != nil)
        return event
    }

    func observe(roundTrip r: RoundTrip) {
        roundTrips += 1
        hostStamped.observe(r)
        publish(at: r.received, force: false)
    }

    /// A device timestamp of something that arrived at `receivedAt`, on the host timeline.
    func map(deviceTime: Int64, receivedAt: HostInstant) -> MappedInstant? {
        if exchanges > 0 { return bracketed.map(deviceTime: deviceTime, receivedAt: receivedAt) }
        if stamps > 0 { return oneWay.map(deviceTime: deviceTime, receivedAt: receivedAt) }
        return nil
    }

    /// The uncertainty of a host stamp of this device: the latency spread of its round trips.
    var hostStampUncertaintyNs: Int64? { hostStamped.latencySpreadNs }

    /// What `devices` shows.
    var info: DeviceClockInfo { published.withLock { $0 } }

    /// Publishes at most every 200 ms (the device thread must not take a lock per observation).
    private func publish(at now: HostInstant, force: Bool) {
        if !force, let last = lastPublished, now.nanoseconds - last < 200_000_000 { return }
        lastPublished = now.nanoseconds
        let model = self.model
        var info = DeviceClockInfo(model: model, observations: exchanges + stamps + roundTrips, segments: 0, offsetNs: nil, driftPPM: nil, uncertaintyNs: nil)
        switch model {
        case "bracketed", "one-way":
            let segment = model == "bracketed" ? bracketed.currentSegment : oneWay.currentSegment
            info.segments = model == "bracketed" ? bracketed.segments.count : oneWay.segments.count
            // The segment's drift is that of host − device per device ns: a fast device clock
            // has a negative one.
            info.driftPPM = segment.map { -$0.drift * 1e6 }
            if let latest, let m = map(deviceTime: latest.device, receivedAt: latest.arrival) {
                info.offsetNs = Double(m.host.nanoseconds &- latest.device)
                info.uncertaintyNs = m.uncertaintyNs
            }
        case "host-stamped":
            info.uncertaintyNs = hostStamped.latencySpreadNs
        default:
            break
        }
        published.withLock { $0 = info }
    }
}
