# Loads the Vagrantfile with a recording stand-in for Vagrant's config object
# and prints, as JSON, what it defines: machines (address, memory, cpus per
# provider) and the Ansible provisioner's settings. Used by test_vagrant.py.
require "json"

class Recorder
  attr_reader :calls

  def initialize
    @calls = {}
  end

  def method_missing(name, *args, **kwargs, &block)
    key = name.to_s
    if key.end_with?("=")
      @calls[key.chomp("=")] = args.first
      return args.first
    end
    child = (@calls[key] ||= Recorder.new)
    if block || !args.empty? || !kwargs.empty?
      entry = Recorder.new
      (child.calls["_each"] ||= []) << { "args" => args, "kwargs" => kwargs, "value" => entry }
      block&.call(entry)
      return entry
    end
    child
  end

  def respond_to_missing?(*) = true

  def to_h
    @calls.transform_values do |value|
      case value
      when Recorder then value.to_h
      when Array then value.map { |e| e.is_a?(Hash) ? e.transform_values { |v| v.is_a?(Recorder) ? v.to_h : v } : e }
      else value
      end
    end
  end
end

module Vagrant
  def self.configure(_version)
    $config = Recorder.new
    yield $config
  end
end

load ARGV.fetch(0)
puts JSON.generate($config.to_h)
