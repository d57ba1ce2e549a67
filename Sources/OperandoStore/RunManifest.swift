import Foundation
import OperandoCore

/// `run.json` in every run directory: what the run is, where it came from, and how it ended.
/// Rewritten atomically (temporary file, fsync, rename) at start and at stop.
public struct RunManifest: Codable, Sendable {
    public enum State: String, Codable, Sendable {
        /// Being written now (or the daemon died while writing it: recovery closes it).
        case recording
        /// Stopped and drained cleanly.
        case complete
        /// Stopped because writing failed (see `stopReason`); what was written is intact.
        case failed
    }

    public static let formatName = "operandod-run/1"

    public var format: String = RunManifest.formatName
    public var id: String
    public var name: String
    public var state: State
    public var metadata: [String: String]
    public var startedAt: String
    public var startAnchor: RealtimeAnchor
    public var stoppedAt: String?
    public var stopAnchor: RealtimeAnchor?
    public var startReason: String
    public var stopReason: String?
    public var streams: [StreamDescriptor]
    public var provenance: Provenance
    /// How much may be lost on power failure, in words.
    public var durability: String
    public var segments: Int
    public var summary: [StreamCounts]?

    public init(
        id: String, name: String, metadata: [String: String], startAnchor: RealtimeAnchor, startReason: String,
        streams: [StreamDescriptor], provenance: Provenance, durability: String
    ) {
        self.id = id
        self.name = name
        self.state = .recording
        self.metadata = metadata
        self.startedAt = Self.iso8601(startAnchor.utcNanoseconds)
        self.startAnchor = startAnchor
        self.startReason = startReason
        self.streams = streams
        self.provenance = provenance
        self.durability = durability
        self.segments = 0
    }

    public static func iso8601(_ utcNanoseconds: Int64) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f.string(from: Date(timeIntervalSince1970: Double(utcNanoseconds) / 1e9))
    }

    public func encoded() throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return Array(try e.encode(self)) + [0x0A]
    }

    public static func load(_ path: String) throws -> RunManifest {
        try JSONDecoder().decode(RunManifest.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
    }
}

/// Where a run came from: enough to reproduce its setup and to trust its data.
public struct Provenance: Codable, Sendable {
    public var daemonVersion: String
    public var hostName: String
    public var configPath: String
    /// The configuration file exactly as loaded.
    public var configText: String
    public var devices: [DeviceProvenance]
    public var libraries: [String: String]

    public init(daemonVersion: String, hostName: String, configPath: String, configText: String, devices: [DeviceProvenance], libraries: [String: String]) {
        self.daemonVersion = daemonVersion
        self.hostName = hostName
        self.configPath = configPath
        self.configText = configText
        self.devices = devices
        self.libraries = libraries
    }
}

public struct DeviceProvenance: Codable, Sendable {
    public var name: String
    public var driver: String
    public var driverVersion: String
    public var transport: String
    public var identity: DeviceIdentity?
    /// Resolution of the device's timestamps, ns (its clock model adds it to every uncertainty).
    public var clockResolutionNs: Double?
    /// The most the constant one-way delay of its stamps can be, ns (one-way clock model).
    public var oneWayLatencyMaxNs: Int64?

    public init(
        name: String, driver: String, driverVersion: String, transport: String, identity: DeviceIdentity?, clockResolutionNs: Double? = nil,
        oneWayLatencyMaxNs: Int64? = nil
    ) {
        self.name = name
        self.driver = driver
        self.driverVersion = driverVersion
        self.transport = transport
        self.identity = identity
        self.clockResolutionNs = clockResolutionNs
        self.oneWayLatencyMaxNs = oneWayLatencyMaxNs
    }
}
