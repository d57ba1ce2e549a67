import AmptekDriver
import AmptekSimulator
import ArgumentParser
import Foundation
import OperandoCore
import OperandoIO
import OperandoVirtualCell

/// `operando-bench usb`: Amptek spectra per second and MB/s through the real USB path — libusb,
/// usbfs ioctls served by the umockdev harness (Tests/Support/umockdev-harness.py), the
/// simulator behind an emulated 10c4:842a device — next to the same requests and the same bytes
/// through an in-memory packet link to the same simulator, in one run.
///
/// The USB half runs in a child process under the harness (`--inner`), since libusb only sees
/// the emulated device under umockdev's preload.
struct USBBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "usb",
        abstract: "Amptek spectra/s and MB/s through libusb and an emulated USB device, against an in-memory link.")

    @Option(name: .long, help: "Spectrum + status requests per measurement.") var spectra = 1000
    @Option(name: .long, help: "MCA channels (256…8192).") var channels = 8192
    @Option(name: .long, help: "The umockdev harness script.") var harness = "Tests/Support/umockdev-harness.py"
    @Flag(name: .long, help: "One JSON object instead of lines.") var json = false
    @Flag(name: .long, help: .hidden) var inner = false

    static let serial = "BENCH0001"

    func validate() throws {
        guard [256, 512, 1024, 2048, 4096, 8192].contains(channels) else { throw ValidationError("--channels must be a power of two in 256…8192") }
        guard spectra > 0 else { throw ValidationError("--spectra must be positive") }
    }

    struct Figures {
        var seconds: Double
        var bytes: Int
        var spectraPerSecond: Double { Double(bytes / bytesPerSpectrum) / seconds }
        var bytesPerSpectrum: Int
        var megabytesPerSecond: Double { Double(bytes) / seconds / 1e6 }
    }

    func run() throws {
        let clock = MonotonicRawClock()
        if inner {
            let transport = USBBulkTransport(match: USBDeviceMatch(vendor: 0x10C4, product: 0x842A, serialNumber: Self.serial), clock: clock)
            try transport.open()
            defer { transport.close() }
            let f = try Self.measure(transport, channels: channels, spectra: spectra)
            print("{\"seconds\": \(f.seconds), \"bytes\": \(f.bytes)}")
            return
        }

        // In memory: the same simulator on the device end of an in-process packet link.
        let link = InMemoryLink(clock: clock)
        let simulator = AmptekSimulator(cell: VirtualCell(), clock: clock, serialNumber: Self.serial)
        let stop = StopFlag()
        let server = IOThread(name: "bench-amptek") { simulator.serve(link.devicePackets, shouldStop: { stop.isSet }) }
        let memory = try Self.measure(link.hostPackets, channels: channels, spectra: spectra)
        stop.set()
        server.join()

        let usb = try runUnderHarness()
        let ratio = usb.megabytesPerSecond / memory.megabytesPerSecond
        emit(
            json,
            [
                "usb_spectra_per_s": usb.spectraPerSecond, "usb_mb_per_s": usb.megabytesPerSecond,
                "memory_spectra_per_s": memory.spectraPerSecond, "memory_mb_per_s": memory.megabytesPerSecond, "ratio": ratio,
            ],
            lines: [
                "amptek \(channels)-channel spectrum + status (\(memory.bytesPerSpectrum) bytes each), \(spectra) requests, one at a time:",
                String(format: "  USB (libusb → usbfs → umockdev → simulator): %8.0f spectra/s  %7.1f MB/s", usb.spectraPerSecond, usb.megabytesPerSecond),
                String(format: "  in-memory packet link (baseline):             %8.0f spectra/s  %7.1f MB/s", memory.spectraPerSecond, memory.megabytesPerSecond),
                String(format: "  ratio USB / in-memory: %.3f", ratio),
            ])
    }

    /// Configures the MCA, then asks for spectrum + status `spectra` times, checking each reply's
    /// length and checksum. Returns the time for the requests and the bytes received.
    static func measure(_ link: any PacketTransport, channels: Int, spectra: Int) throws -> Figures {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: AmptekPacket.maxReplyPacketBytes, alignment: 64)
        defer { buffer.deallocate() }
        func exchange(_ request: AmptekRequest) throws -> Int {
            try request.encoded.withUnsafeBytes { try link.send($0, timeout: .seconds(2)) }
            let deadline = ContinuousClock.now + .seconds(5)
            while ContinuousClock.now < deadline {
                let read = try link.receive(into: buffer, timeout: .milliseconds(200))
                if read.count > 0 { return read.count }
            }
            throw InstrumentError(.replyTimedOut, device: link.endpoint, "no answer to \(request) within 5 s")
        }
        _ = try exchange(AmptekRequest.textConfiguration("MCAC=\(channels);"))
        _ = try exchange(.enableMCA)
        let expected = AmptekPacket.overheadBytes + 3 * channels + 64
        var bytes = 0
        let start = ContinuousClock.now
        for k in 0..<spectra {
            let n = try exchange(.spectrumStatus)
            let body = UnsafeRawBufferPointer(rebasing: buffer[0..<n - 2])
            let sent = UInt16(buffer[n - 2]) << 8 | UInt16(buffer[n - 1])
            guard n == expected, AmptekPacket.checksum(body) == sent else {
                throw InstrumentError(.protocolViolation, device: link.endpoint, "reply \(k) is \(n) bytes (expected \(expected)) or its checksum is wrong")
            }
            bytes += n
        }
        let elapsed = start.duration(to: .now)
        return Figures(seconds: Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18, bytes: bytes, bytesPerSpectrum: expected)
    }

    /// Runs this benchmark's USB half in a child under the umockdev harness.
    private func runUnderHarness() throws -> Figures {
        let me = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let simulator = URL(fileURLWithPath: me).deletingLastPathComponent().appendingPathComponent("operando-sim").path
        guard FileManager.default.isExecutableFile(atPath: simulator) else {
            throw ValidationError("\(simulator) is missing: build it first (swift build --product operando-sim)")
        }
        guard FileManager.default.fileExists(atPath: harness) else {
            throw ValidationError("\(harness) not found: run from the repository root or pass --harness PATH")
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [
            harness, "--no-shim", "--timeout", "600",
            "--usb-device", "name=amptek0 vid=10c4 pid=842a manufacturer=Amptek product=DP5 serial=\(Self.serial)",
            "--usb-sim", "amptek0=exec:\(simulator) amptek --name \(Self.serial) --packet-fd {fd}",
            "--", me, "usb", "--inner", "--spectra", String(spectra), "--channels", String(channels),
        ]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard process.terminationStatus == 0,
            let line = text.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Double],
            let seconds = object["seconds"], let bytes = object["bytes"]
        else {
            throw ValidationError("the USB half failed (harness exit \(process.terminationStatus)); its output: \(text)")
        }
        return Figures(seconds: seconds, bytes: Int(bytes), bytesPerSpectrum: AmptekPacket.overheadBytes + 3 * channels + 64)
    }
}

/// Set once from one thread, read from another.
final class StopFlag: @unchecked Sendable {
    private let lock = ConditionLock()
    private var value = false
    var isSet: Bool { lock.withLock { value } }
    func set() { lock.withLock { value = true } }
}
