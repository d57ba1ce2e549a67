import Foundation
import OperandoCore
import OperandoIO
import OperandoStore

/// Writes a run directory the way the recorder lays it out — `run.json`, then segments that each
/// begin with every stream's descriptor and a realtime anchor, then records — from records the
/// test makes up, so every figure read back can be compared with a known truth.
final class SyntheticRun {
    let directory: String
    private(set) var manifest: RunManifest
    private(set) var segmentIndex = 1
    private var writer: SegmentWriter
    /// The next sequence number of each stream.
    private(set) var sequences: [UInt64]
    let runID: [UInt8] = Array(repeating: 7, count: 16)

    /// `streams` get ids 0, 1, … in order. `metadataJSON` is decoded into the manifest's metadata
    /// type, whatever it is (a JSON object of strings fits every version of it).
    init(
        directory: String, streams: [StreamDescriptor], devices: [DeviceProvenance], anchor: RealtimeAnchor, name: String = "synthetic",
        metadataJSON: String = "{}", state: RunManifest.State = .complete, stopAnchor: RealtimeAnchor? = nil, configText: String = ""
    ) throws {
        self.directory = directory
        let numbered = streams.enumerated().map { i, d in
            var d = d
            d.id = UInt32(i)
            return d
        }
        var m = RunManifest(
            id: "run-id", name: name, metadata: [:], startAnchor: anchor, startReason: "test", streams: numbered,
            provenance: Provenance(daemonVersion: "test", hostName: "test", configPath: "", configText: configText, devices: devices, libraries: [:]),
            durability: "test")
        m.metadata = try JSONDecoder().decode(type(of: m.metadata), from: Data(metadataJSON.utf8))
        m.state = state
        if let stopAnchor {
            m.stopAnchor = stopAnchor
            m.stoppedAt = RunManifest.iso8601(stopAnchor.utcNanoseconds)
            m.stopReason = "test finished"
        }
        m.segments = 1
        manifest = m
        sequences = Array(repeating: 0, count: numbered.count)
        try FileSystem.makeDirectories(directory + "/segments")
        try FileSystem.writeAtomically(directory + "/run.json", bytes: m.encoded())
        writer = try Self.openSegment(directory: directory + "/segments", index: 1, runID: runID, manifest: m)
    }

    private static func openSegment(directory: String, index: Int, runID: [UInt8], manifest: RunManifest) throws -> SegmentWriter {
        let w = try SegmentWriter(directory: directory, index: index, runID: runID, anchor: manifest.startAnchor)
        for d in manifest.streams {
            let h = RecordHeader(kind: .descriptor, streamID: d.id, sequence: 0, hostTime: manifest.startAnchor.host, deviceTime: nil)
            try w.append(SegmentFormat.encodeRecord(h, payload: Array(try JSONEncoder().encode(d))))
        }
        let h = RecordHeader(kind: .anchor, streamID: 0, sequence: 0, hostTime: manifest.startAnchor.host, deviceTime: nil)
        try w.append(SegmentFormat.encodeRecord(h, payload: Array(try JSONEncoder().encode(manifest.startAnchor))))
        return w
    }

    /// The newest segment's path.
    var segmentPath: String { writer.path }

    /// Appends a record to stream `stream` with the next sequence number.
    func put(_ stream: Int, kind: RecordKind = .data, host: Int64, device: Int64?, _ payload: [UInt8]) throws {
        let h = RecordHeader(kind: kind, streamID: UInt32(stream), sequence: sequences[stream], hostTime: HostInstant(nanoseconds: host), deviceTime: device)
        sequences[stream] += 1
        try writer.append(SegmentFormat.encodeRecord(h, payload: payload))
    }

    /// Appends an event record, stamped with the event's host and device time, as the recorder does.
    func put(_ stream: Int, event: Event) throws {
        try put(stream, kind: .event, host: event.hostTime.nanoseconds, device: event.deviceTime, Array(try JSONEncoder().encode(event)))
    }

    /// Appends a clock observation (host time = `hostAfter`, device time = the device's reading).
    func put(_ stream: Int, clock o: ClockObservation) throws {
        try o.withPayload { try put(stream, host: o.hostAfter.nanoseconds, device: o.deviceTime, Array($0)) }
    }

    /// Continues in a new segment (descriptors and anchor first), as the writer does at its size limit.
    func newSegment() throws {
        try writer.sync()
        segmentIndex += 1
        writer = try Self.openSegment(directory: directory + "/segments", index: segmentIndex, runID: runID, manifest: manifest)
        manifest.segments = segmentIndex
        try FileSystem.writeAtomically(directory + "/run.json", bytes: manifest.encoded())
    }

    func sync() throws { try writer.sync() }

    static func bytes<T>(_ values: [T]) -> [UInt8] { values.withUnsafeBytes { Array($0) } }
}
