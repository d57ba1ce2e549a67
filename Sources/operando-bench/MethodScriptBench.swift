import ArgumentParser
import Foundation
import OperandoCore
import PalmSensDriver

/// `operando-bench methodscript`: MethodSCRIPT data packages decoded per second by the driver's
/// codec (framed byte by byte, as the driver reads them), next to a straightforward Python decoder
/// of the same lines (`scripts/bench/methodscript_decode.py`) run in the same benchmark.
struct MethodScriptBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "methodscript",
        abstract: "MethodSCRIPT packages decoded per second, against a Python decoder of the same lines.")

    @Option(name: .long, help: "Packages to decode.") var packages = 300_000
    @Flag(name: .long, help: "One JSON object: packages_per_s, python_packages_per_s, ratio.") var json = false

    /// A package as a potentiostat streams it during a technique: timer, E, I with status and
    /// current range, cycle and step.
    static func lines(count: Int, seed: UInt64) -> [UInt8] {
        var random = SeededRandom(seed: seed)
        let prefixes: [Character] = ["u", "m", " ", "n", "p"]
        func variable(_ type: String, _ raw: Int, _ prefix: Character) -> String {
            let hex = String(raw + (1 << 27), radix: 16, uppercase: true)
            return type + String(repeating: "0", count: max(0, 7 - hex.count)) + hex + String(prefix)
        }
        var out = [UInt8]()
        out.reserveCapacity(count * 64)
        for k in 0..<count {
            let e = Int(random.uniform() * 8_000_000) - 4_000_000
            let i = Int(random.uniform() * 2_000_000) - 1_000_000
            let range = Int(random.uniform() * 8)
            let status = k % 97 == 0 ? 2 : 0
            let line = "P" + variable("eb", k * 100, "m") + ";" + variable("da", e, "u") + ";"
                + variable("ba", i, prefixes[k % prefixes.count]) + ",1\(status),2" + String(format: "%02X", 0x80 + range)
                + ";" + variable("ja", k / 1000, "i") + ";" + variable("jb", 1, "i") + "\n"
            out += Array(line.utf8)
        }
        return out
    }

    func run() throws {
        let bytes = Self.lines(count: packages, seed: 7)
        // Ours: the framer and the decoder, as the driver runs them (whole lines decoded where they
        // lie in the read buffer), best of 3.
        var best = Double.infinity
        var checksum = 0.0
        for _ in 0..<3 {
            var framer = MSLineFramer(capacity: 1024)
            var package = MSPackage()
            var decoded = 0
            var sum = 0.0
            let start = ContinuousClock.now
            // In reads of 4 KiB, as the driver gets them from the port.
            bytes.withUnsafeBufferPointer { all in
                var offset = 0
                while offset < all.count {
                    let chunk = UnsafeBufferPointer(rebasing: all[offset..<min(all.count, offset + 4096)])
                    framer.feed(chunk) { output, line in
                        guard output == .line, MethodSCRIPTCodec.decode(line, into: &package) == .package else { return }
                        decoded += 1
                        sum += package.withVariables { vars in
                            var s = 0.0
                            for v in vars {
                                if v.value.isFinite { s += v.value }
                                s += Double(v.status)
                            }
                            return s
                        }
                    }
                    offset += 4096
                }
            }
            let d = ContinuousClock.now - start
            best = min(best, Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
            precondition(decoded == packages, "decoded \(decoded) of \(packages) packages")
            checksum = sum
        }
        let ours = Double(packages) / best

        // Python, on the same lines.
        let file = NSTemporaryDirectory() + "methodscript-bench-\(getpid()).txt"
        guard FileManager.default.createFile(atPath: file, contents: Data(bytes)) else { throw ValidationError("cannot write \(file)") }
        defer { try? FileManager.default.removeItem(atPath: file) }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", root + "/scripts/bench/methodscript_decode.py", file]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0, let result = try JSONSerialization.jsonObject(with: data) as? [String: Any],
            let python = result["packages_per_s"] as? Double
        else { throw ValidationError("the Python decoder failed: \(String(decoding: data, as: UTF8.self))") }
        let pythonChecksum = result["checksum"] as? Double ?? .nan
        let agree = abs(pythonChecksum - checksum) <= 1e-6 * max(1, abs(checksum))
        if json {
            let object: [String: Any] = ["packages": packages, "packages_per_s": ours, "python_packages_per_s": python, "ratio": ours / python, "checksums_agree": agree]
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print("MethodSCRIPT packages (timer, E, I with status and range, cycle, step), \(packages) lines")
            print(String(format: "ours (framer + decoder):  %10.0f packages/s", ours))
            print(String(format: "Python decoder:           %10.0f packages/s", python))
            print(String(format: "ratio: %.1f× (target ≥ 20×); decoded values agree: %@", ours / python, agree ? "yes" : "NO"))
        }
    }
}
