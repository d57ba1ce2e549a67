import ArgumentParser
import Foundation
import OperandoCore
import OperandoIO
import OperandoStore
import OperandoTimeline

#if canImport(Glibc)
    import Glibc
#endif

/// `operando-bench export`: a run synthesized at the demo's rates (Config/demo.toml), exported to
/// NeXus/HDF5 and to CSV, next to a baseline measured on the same run: one RunReader pass over
/// its segments (every record CRC-checked), doing nothing else — the floor any export pays.
///
/// The run, per hour: the potentiostat at 100 Hz (E, I, cycle: f64, one row per record, with
/// device time; its clock 25 ppm fast, queried every second), the X-ray detector at 4 spectra/s
/// of 2048 u32 channels (a background, nickel-like peaks that follow the state of charge, and
/// counting noise; one-way stamps), the stage polled at 10 Hz (position and encoder in µm, host
/// stamps and round trips), a stimulus every minute and a marker every 10 minutes. Segments
/// rotate at 256 MiB as the daemon's default `segment_mb` does.
///
/// The exports are given the run's clock refit (`RunClocks.fit`, timed on its own): without it
/// they fit first, which is one more read of the segments. The 24-hour figures scale the
/// measured seconds linearly (the work is linear in the records) and include the refit.
struct ExportBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "A run at the demo's rates to NeXus/HDF5 and CSV, next to one plain read of it.")

    @Flag(name: .long, help: "One JSON object: nexus_s, csv_s, read_s, nexus_mb_per_s, extrapolated_24h_nexus_s, extrapolated_24h_csv_s and more.")
    var json = false
    @Option(name: .long, help: "Hours of run to synthesize at the demo's rates.") var hours: Double = 0.25
    @Option(name: .long, help: "Directory on the disk to measure (default: a temporary one); the run and the exports go under it and are removed.")
    var directory: String?
    @Flag(name: .long, help: "Keep the synthesized run and the exports.") var keep = false
    @Option(name: .customLong("run"), help: "Export this run directory instead of a synthesized one (it is only read); 24-hour figures scale by its span.")
    var existingRun: String?

    func validate() throws {
        guard hours > 0 && hours <= 48 else { throw ValidationError("--hours must be in (0, 48]") }
    }

    func run() throws {
        let base = (directory ?? NSTemporaryDirectory()) + "/operando-export-bench-\(getpid())"
        try FileSystem.makeDirectories(base)
        defer { if !keep { try? FileManager.default.removeItem(atPath: base) } }
        let runDirectory = existingRun ?? base + "/run"
        let synthesized = existingRun == nil ? try DemoRateRun.write(into: runDirectory, hours: hours) : nil
        let reader = try RunReader(directory: runDirectory)

        // Baseline: one pass, every record read and CRC-checked, nothing done with it (but the
        // span of host times, for a given run's 24-hour figures).
        var records = 0
        var first = Int64.max
        var last = Int64.min
        let readSeconds = try seconds2 {
            records = try reader.records { r in
                first = min(first, r.header.hostTime.nanoseconds)
                last = max(last, r.header.hostTime.nanoseconds)
            }.records
        }
        let segmentBytes = reader.segmentPaths.reduce(0) { total, path in
            var info = stat()
            return total + (stat(path, &info) == 0 ? Int(info.st_size) : 0)
        }
        let hours = synthesized == nil ? Double(max(1, last - first)) / 3600e9 : hours
        var clocks: RunClocks?
        let fitSeconds = try seconds2 { clocks = try RunClocks.fit(reader) }
        var nexus: ExportSummary?
        let nexusSeconds = try seconds2 { nexus = try NeXusExport.write(reader, clocks: clocks, to: base + "/run.nxs") }
        var csv: ExportSummary?
        let csvSeconds = try seconds2 { csv = try CSVExport.write(reader, clocks: clocks, to: base + "/csv") }
        guard let nexus, let csv else { return }
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        let peakMiB = Double(usage.ru_maxrss) / 1024

        let mb = Double(segmentBytes) / 1e6
        let scale = 24 / hours
        let figures: [String: Double] = [
            "hours": hours, "records": Double(records), "segment_mb": mb, "segments": Double(reader.segmentPaths.count),
            "read_s": readSeconds, "read_mb_per_s": mb / readSeconds, "read_records_per_s": Double(records) / readSeconds,
            "fit_s": fitSeconds,
            "nexus_s": nexusSeconds, "nexus_mb_per_s": mb / nexusSeconds, "nexus_records_per_s": Double(records) / nexusSeconds,
            "nexus_ratio_to_read": nexusSeconds / readSeconds, "nexus_file_mb": Double(nexus.bytes) / 1e6,
            "csv_s": csvSeconds, "csv_mb_per_s": mb / csvSeconds, "csv_records_per_s": Double(records) / csvSeconds,
            "csv_ratio_to_read": csvSeconds / readSeconds, "csv_files_mb": Double(csv.bytes) / 1e6,
            "extrapolated_24h_read_s": readSeconds * scale,
            "extrapolated_24h_nexus_s": (fitSeconds + nexusSeconds) * scale, "extrapolated_24h_csv_s": (fitSeconds + csvSeconds) * scale,
            "peak_rss_mib": peakMiB,
        ]
        func line(_ name: String, _ s: Double) -> String {
            String(format: "%@ %8.2f s  %10.0f records/s  %7.1f MB/s", name, s, Double(records) / s, mb / s)
        }
        let what =
            synthesized.map {
                String(format: "%.2f h at the demo's rates, %d samples, %d spectra, %d stage polls", hours, $0.pstatRows, $0.spectra, $0.stageRows)
            }
            ?? String(format: "%@ (%.3f h)", runDirectory, hours)
        emit(
            json, figures,
            lines: [
                String(format: "run: %@: %d records, %.1f MB in %d segment(s)", what, records, mb, reader.segmentPaths.count),
                line("read, one CRC-checked pass (baseline):", readSeconds),
                line("NeXus/HDF5 export:                     ", nexusSeconds)
                    + String(format: "  %.1f× the read, file %.1f MB", nexusSeconds / readSeconds, Double(nexus.bytes) / 1e6),
                line("CSV export:                            ", csvSeconds)
                    + String(format: "  %.1f× the read, files %.1f MB", csvSeconds / readSeconds, Double(csv.bytes) / 1e6),
                String(format: "clock refit (when the export is not given one): %.2f s", fitSeconds),
                String(
                    format: "24 h at these rates (refit included): NeXus ≈ %.0f s, CSV ≈ %.0f s (the read alone ≈ %.0f s)",
                    (fitSeconds + nexusSeconds) * scale, (fitSeconds + csvSeconds) * scale, readSeconds * scale),
                String(format: "peak memory of the whole benchmark (synthesis included): %.0f MiB", peakMiB),
            ])
    }
}

/// Writes a run at the demo's rates, record by record (bounded memory), like the recorder lays it out.
struct DemoRateRun {
    var segments = 0
    var pstatRows = 0
    var spectra = 0
    var stageRows = 0

    static let segmentLimit = 256 << 20
    static let channels = 2048

    static func write(into directory: String, hours: Double) throws -> DemoRateRun {
        let h0: Int64 = 1_000_000_000_000
        let duration = Int64(hours * 3600e9)
        let anchor = RealtimeAnchor(
            before: HostInstant(nanoseconds: h0 - 10_000), after: HostInstant(nanoseconds: h0 + 10_000), utcNanoseconds: 1_800_000_000_000_000_000,
            taiOffsetSeconds: 37)
        let streams = [
            StreamDescriptor(
                name: "pstat/ei", device: "pstat", kind: .samples, elementType: .float64,
                fields: [Field("E", unit: "V"), Field("I", unit: "A"), Field("cycle", unit: "1")], shape: [3], nominalRateHz: 100, maxPayloadBytes: 24),
            .events(device: "pstat"), .clock(device: "pstat"),
            StreamDescriptor(
                name: "xrf/spectrum", device: "xrf", kind: .frames, elementType: .uint32, fields: [Field("counts", unit: "counts")], shape: [channels],
                nominalRateHz: 4, maxPayloadBytes: channels * 4),
            .events(device: "xrf"), .clock(device: "xrf"),
            StreamDescriptor(
                name: "stage/position", device: "stage", kind: .samples, elementType: .float64,
                fields: [Field("pos1", unit: "um"), Field("encoder1", unit: "um")], shape: [2], nominalRateHz: 10, maxPayloadBytes: 16),
            .events(device: "stage"), .clock(device: "stage"), .events(device: "daemon"),
        ].enumerated().map { i, d in
            var d = d
            d.id = UInt32(i)
            return d
        }
        var manifest = RunManifest(
            id: UUID().uuidString, name: "export-bench", metadata: [:], startAnchor: anchor, startReason: "bench", streams: streams,
            provenance: Provenance(
                daemonVersion: "bench", hostName: "bench", configPath: "Config/demo.toml", configText: "",
                devices: [
                    DeviceProvenance(
                        name: "pstat", driver: "demo-potentiostat", driverVersion: "1", transport: "simulated", identity: nil, clockResolutionNs: 1000),
                    DeviceProvenance(
                        name: "xrf", driver: "demo-xrf", driverVersion: "1", transport: "simulated", identity: nil, clockResolutionNs: 1000,
                        oneWayLatencyMaxNs: 1_000_000),
                    DeviceProvenance(name: "stage", driver: "zaber-ascii", driverVersion: "1", transport: "simulated", identity: nil),
                ], libraries: [:]),
            durability: "bench")
        manifest.state = .complete
        let stop = h0 + duration
        manifest.stopAnchor = RealtimeAnchor(
            before: HostInstant(nanoseconds: stop), after: HostInstant(nanoseconds: stop), utcNanoseconds: anchor.utcNanoseconds + duration,
            taiOffsetSeconds: 37)
        manifest.stoppedAt = RunManifest.iso8601(anchor.utcNanoseconds + duration)
        try FileSystem.makeDirectories(directory + "/segments")

        var result = DemoRateRun()
        var writer: SegmentWriter?
        var sequences = [UInt64](repeating: 0, count: streams.count)
        var buffer: [UInt8] = []
        func openSegment() throws {
            try writer?.sync()
            result.segments += 1
            let w = try SegmentWriter(directory: directory + "/segments", index: result.segments, runID: Array(repeating: 1, count: 16), anchor: anchor)
            for d in streams {
                try w.append(
                    SegmentFormat.encodeRecord(
                        RecordHeader(kind: .descriptor, streamID: d.id, sequence: 0, hostTime: anchor.host, deviceTime: nil),
                        payload: Array(try JSONEncoder().encode(d))))
            }
            try w.append(
                SegmentFormat.encodeRecord(
                    RecordHeader(kind: .anchor, streamID: 0, sequence: 0, hostTime: anchor.host, deviceTime: nil),
                    payload: Array(try JSONEncoder().encode(anchor))))
            writer = w
        }
        /// Records are gathered into 1 MiB writes, as the recorder's writev does.
        func put(_ stream: Int, kind: RecordKind = .data, host: Int64, device: Int64?, _ payload: UnsafeRawBufferPointer) throws {
            let size = RecordLayout.recordSize(payloadBytes: payload.count)
            if let w = writer, w.size + buffer.count + size > segmentLimit {
                try w.append(buffer)
                buffer.removeAll(keepingCapacity: true)
                try openSegment()
            }
            let h = RecordHeader(
                kind: kind, streamID: UInt32(stream), sequence: sequences[stream], hostTime: HostInstant(nanoseconds: host), deviceTime: device)
            sequences[stream] += 1
            let start = buffer.count
            buffer.append(contentsOf: repeatElement(0, count: size))
            buffer.withUnsafeMutableBytes { b in
                let record = UnsafeMutableRawBufferPointer(rebasing: b[start..<(start + size)])
                let body = RecordLayout.headerSize + payload.count
                record.storeBytes(of: UInt32(body).littleEndian, as: UInt32.self)
                h.store(to: record.baseAddress! + RecordLayout.prefixSize)
                if payload.count > 0 {
                    (record.baseAddress! + RecordLayout.prefixSize + RecordLayout.headerSize).copyMemory(from: payload.baseAddress!, byteCount: payload.count)
                }
                let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: record[RecordLayout.prefixSize..<(RecordLayout.prefixSize + body)]))
                record.storeBytes(of: crc.littleEndian, toByteOffset: 4, as: UInt32.self)
            }
            if buffer.count >= 1 << 20, let w = writer {
                try w.append(buffer)
                buffer.removeAll(keepingCapacity: true)
            }
        }
        func put<T>(_ stream: Int, kind: RecordKind = .data, host: Int64, device: Int64?, values: [T]) throws {
            try values.withUnsafeBytes { try put(stream, kind: kind, host: host, device: device, $0) }
        }
        func put(_ stream: Int, event: Event) throws {
            try put(stream, kind: .event, host: event.hostTime.nanoseconds, device: event.deviceTime, values: Array(try JSONEncoder().encode(event)))
        }
        func put(_ stream: Int, clock o: ClockObservation) throws {
            try o.withPayload { try put(stream, host: o.hostAfter.nanoseconds, device: o.deviceTime, $0) }
        }

        try openSegment()
        var random = SeededRandom(seed: 20_240_607)
        func delay() -> Int64 { 20_000 + Int64(-log(random.uniform()) * 300_000) }
        func pstatDevice(_ t: Int64) -> Int64 { 7_000_000_000_000 + t + t / 40_000 }  // 25 ppm fast
        func xrfDevice(_ t: Int64) -> Int64 { 3_000_000_000_000 + t - t / 25_000 }  // 40 ppm slow
        // Background and peak shape of the spectra, computed once.
        let background = (0..<channels).map { 40 + 400 * exp(-Double($0) / 300) }
        let peaks = [(center: 748.0, width: 6.0), (center: 826.0, width: 7.0), (center: 1090.0, width: 8.0)]
        var spectrum = [UInt32](repeating: 0, count: channels)
        var spectrumStart = h0
        var nextSpectrum = h0 + 250_000_000
        var t = h0
        var k: Int64 = 0
        while t < stop {
            let hoursIn = Double(t - h0) / 3600e9
            let soc = 0.5 + 0.4 * sin(2 * Double.pi * hoursIn / 20)
            try put(
                0, host: t + delay(), device: pstatDevice(t), values: [3.4 + 0.8 * soc + 0.001 * (random.uniform() - 0.5), 0.0025, Double(Int(hoursIn / 20))])
            result.pstatRows += 1
            if k % 100 == 0 {
                let before = t - 30_000 - Int64(random.uniform() * 150_000)
                let after = t + 30_000 + Int64(random.uniform() * 150_000)
                try put(
                    2,
                    clock: ClockObservation(
                        kind: .bracketed, hostBefore: HostInstant(nanoseconds: before), hostAfter: HostInstant(nanoseconds: after), deviceTime: pstatDevice(t)))
            }
            if k % 10 == 0 {
                let arrival = t + 2 * delay()
                let x = 2500.0 + 10 * sin(Double(k) / 1000)
                try put(6, host: arrival, device: nil, values: [x, x + 0.047625 * Double(Int(random.uniform() * 3))])
                try put(
                    8,
                    clock: ClockObservation(
                        kind: .roundTrip, hostBefore: HostInstant(nanoseconds: t), hostAfter: HostInstant(nanoseconds: arrival), deviceTime: nil))
                result.stageRows += 1
            }
            if t >= nextSpectrum {
                for c in 0..<channels {
                    var mean = background[c]
                    for (i, p) in peaks.enumerated() {
                        let height = (i == 0 ? 2000 * soc : 800.0)
                        mean += height * exp(-0.5 * pow((Double(c) - p.center) / p.width, 2))
                    }
                    // Counting noise: normal approximation to Poisson (Box–Muller).
                    let noise = sqrt(-2 * log(random.uniform())) * cos(2 * Double.pi * random.uniform())
                    spectrum[c] = UInt32(max(0, (mean + noise * mean.squareRoot()).rounded()))
                }
                let arrival = nextSpectrum + delay()
                try put(3, host: arrival, device: xrfDevice(spectrumStart), values: spectrum)
                try put(
                    5,
                    clock: ClockObservation(
                        kind: .oneWay, hostBefore: HostInstant(nanoseconds: arrival), hostAfter: HostInstant(nanoseconds: arrival),
                        deviceTime: xrfDevice(nextSpectrum)))
                result.spectra += 1
                spectrumStart = nextSpectrum
                nextSpectrum += 250_000_000
            }
            if k % 6000 == 3000 {
                try put(
                    1,
                    event: Event(
                        kind: .stimulus, source: "pstat", hostTime: HostInstant(nanoseconds: t + delay()), deviceTime: pstatDevice(t), uncertaintyNs: 100_000,
                        message: "current setpoint 2.5 mA", values: ["current_a": .number(0.0025)]))
            }
            if k % 60000 == 0 {
                try put(9, event: Event(kind: .marker, source: "daemon", hostTime: HostInstant(nanoseconds: t), message: "checkpoint \(k / 60000)"))
            }
            k += 1
            t = h0 + k * 10_000_000
        }
        if let w = writer {
            try w.append(buffer)
            try w.sync()
        }
        manifest.segments = result.segments
        try FileSystem.writeAtomically(directory + "/run.json", bytes: manifest.encoded())
        return result
    }
}
