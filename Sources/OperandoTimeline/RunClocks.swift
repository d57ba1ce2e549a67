import Foundation
import OperandoCore
import OperandoIO
import OperandoStore
import OperandoSync

/// A timestamp on the common (host) timeline with its uncertainty, when one is known.
public struct TimelineInstant: Sendable, Equatable, Codable {
    public var host: HostInstant
    /// Half-width of the interval holding the true instant, ns; nil when nothing measured it
    /// (a host stamp of a device that never answered a request).
    public var uncertaintyNs: Int64?

    public init(host: HostInstant, uncertaintyNs: Int64?) {
        self.host = host
        self.uncertaintyNs = uncertaintyNs
    }
}

/// One device's clock, refitted after the fact from the raw observations stored with a run.
public struct DeviceClockFit: Sendable, Codable {
    public enum Model: String, Sendable, Codable {
        /// Bracketed queries of the device clock (preferred when the device answers them).
        case bracketed
        /// Device stamps on what it sent, and their arrival times.
        case oneWay = "one-way"
        /// No device clock: host stamps, with the transport's latency spread as uncertainty.
        case hostStamped = "host-stamped"
        /// Nothing observed.
        case none
    }

    public var device: String
    public var model: Model
    /// Observations the fit used.
    public var observations: Int
    /// Clock segments (a reset or a rate change starts a new one), with their hindsight fits.
    public var segments: [ClockSegment]
    /// (p99 − p1)/2 of the device's request/reply round trips, ns: the uncertainty of its host
    /// stamps. Nil without round trips.
    public var hostStampUncertaintyNs: Int64?

    /// Fits one device's observations (pure): bracketed exchanges when there are any, else
    /// one-way stamps; round trips give the host-stamp uncertainty.
    public init(device: String, observations: [ClockObservation], parameters: DeviceClockParameters = DeviceClockParameters()) {
        self.device = device
        var exchanges: [BracketedExchange] = []
        var stamps: [OneWaySample] = []
        var trips: [Int64] = []
        for o in observations {
            switch o.kind {
            case .bracketed: if let d = o.deviceTime { exchanges.append(BracketedExchange(hostBefore: o.hostBefore, deviceTime: d, hostAfter: o.hostAfter)) }
            case .oneWay: if let d = o.deviceTime { stamps.append(OneWaySample(deviceTime: d, hostArrival: o.hostAfter)) }
            case .roundTrip: trips.append(o.hostAfter.nanoseconds &- o.hostBefore.nanoseconds)
            }
        }
        hostStampUncertaintyNs = HostStampedModel.spread(trips.filter { $0 >= 0 })?.spread
        if !exchanges.isEmpty {
            model = .bracketed
            self.observations = exchanges.count
            segments = refit(exchanges, configuration: parameters.bracketed)
        } else if !stamps.isEmpty {
            model = .oneWay
            self.observations = stamps.count
            segments = refit(stamps, configuration: parameters.oneWay)
        } else {
            model = trips.isEmpty ? .none : .hostStamped
            self.observations = trips.count
            segments = []
        }
    }

    /// A record's or event's time on the common timeline: its device time mapped through the
    /// segment it belongs to (chosen by `hostTime`, its arrival), or its host stamp.
    public func map(deviceTime: Int64?, hostTime: HostInstant) -> TimelineInstant {
        if let d = deviceTime, let segment = segments.segment(receivedAt: hostTime), let m = segment.map(deviceTime: d) {
            return TimelineInstant(host: m.host, uncertaintyNs: m.uncertaintyNs)
        }
        return TimelineInstant(host: hostTime, uncertaintyNs: deviceTime == nil ? hostStampUncertaintyNs : nil)
    }

    /// Rate of the device clock relative to the host in the segment with the most
    /// observations, ppm: positive when it runs fast. (A segment's own `drift` is that of
    /// host − device per device ns, so it has the opposite sign.)
    public var driftPPM: Double? { segments.max { $0.observationCount < $1.observationCount }.map { -$0.drift * 1e6 } }
}

/// Every device clock of a run, refitted from the run's `<device>/clock` streams.
public struct RunClocks: Sendable, Codable {
    public var run: String
    public var devices: [DeviceClockFit]

    public init(run: String, devices: [DeviceClockFit]) {
        self.run = run
        self.devices = devices
    }

    /// Reads the clock streams of `reader`'s run and refits each device, with the clock
    /// parameters recorded in the run's provenance.
    public static func fit(_ reader: RunReader) throws -> RunClocks {
        var parameters: [String: DeviceClockParameters] = [:]
        for d in reader.manifest.provenance.devices {
            var p = DeviceClockParameters()
            if let r = d.clockResolutionNs { p.resolutionNs = r }
            if let l = d.oneWayLatencyMaxNs { p.oneWayLatencyMaxNs = l }
            parameters[d.name] = p
        }
        let clockStreams = reader.manifest.streams.filter { $0.name == "\($0.device)/clock" }
        var byStream: [UInt32: [ClockObservation]] = [:]
        try reader.records(streams: Set(clockStreams.map(\.id))) { r in
            if let o = ClockObservation(payload: r.payload, deviceTime: r.header.deviceTime) { byStream[r.header.streamID, default: []].append(o) }
        }
        let devices = clockStreams.map { s in
            DeviceClockFit(device: s.device, observations: byStream[s.id] ?? [], parameters: parameters[s.device] ?? DeviceClockParameters())
        }
        return RunClocks(run: reader.manifest.name, devices: devices)
    }

    public func device(_ name: String) -> DeviceClockFit? { devices.first { $0.device == name } }
}

extension RunClocks {
    /// Where `write(into:)` puts the refit: `clock.json` in the run directory.
    public static let fileName = "clock.json"

    /// Writes the refit atomically as `<run>/clock.json` (segments, lines and knots of every
    /// device), for tools that map the run's timestamps themselves.
    public func write(into directory: String) throws -> String {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        let path = directory + "/" + Self.fileName
        try FileSystem.writeAtomically(path, bytes: Array(try e.encode(self)) + [0x0A])
        return path
    }

    /// One line per device, for `operandoctl refit`.
    public var summary: [ClockFitSummary] {
        devices.map { d in
            var us: [Int64] = []
            for s in d.segments {
                if s.knots.isEmpty {
                    if let m = s.map(deviceTime: s.firstDeviceTime) { us.append(m.uncertaintyNs) }
                    if let m = s.map(deviceTime: s.lastDeviceTime) { us.append(m.uncertaintyNs) }
                } else {
                    us += s.knots.map { Int64($0.uncertaintyNs.rounded(.up)) }
                }
            }
            if d.model == .hostStamped, let u = d.hostStampUncertaintyNs { us.append(u) }
            us.sort()
            return ClockFitSummary(
                device: d.device, model: d.model.rawValue, observations: d.observations, segments: d.segments.count,
                resets: d.segments.filter { $0.reason == .reset }.count, driftPPM: d.driftPPM,
                uncertaintyMedianNs: us.isEmpty ? nil : us[us.count / 2], uncertaintyMaxNs: us.last)
        }
    }
}

/// A device's refitted clock in one line.
public struct ClockFitSummary: Sendable, Codable, Equatable {
    public var device: String
    public var model: String
    public var observations: Int
    public var segments: Int
    public var resets: Int
    public var driftPPM: Double?
    /// Median and largest uncertainty over the fit's knots (or segment ends), ns.
    public var uncertaintyMedianNs: Int64?
    public var uncertaintyMaxNs: Int64?
}

/// What `refit` answers: the file written and a line per device.
public struct RefitResult: Sendable, Codable {
    public var run: String
    public var file: String
    public var devices: [ClockFitSummary]

    public init(run: String, file: String, devices: [ClockFitSummary]) {
        self.run = run
        self.file = file
        self.devices = devices
    }
}
