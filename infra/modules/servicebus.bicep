// Service Bus: the intake queue, the rejected-requests queue, the completion topic and its
// notifier subscription. Standard tier: topics and duplicate detection (Basic has neither).
// Local (SAS key) auth is off: every client uses Entra ID (managed identity / az login).
// API 2024-01-01: the newest GA version of Microsoft.ServiceBus (azure-rest-api-specs,
// specification/servicebus/resource-manager/Microsoft.ServiceBus/stable/2024-01-01).

@description('Azure region.')
param location string

@description('Namespace name (globally unique).')
param name string

@description('Tags for every resource.')
param tags object = {}

// The intake queue's message lock, in seconds (Service Bus allows at most 5 minutes). The function
// app reads the same value as RLQ_LOCK_DURATION_S (main.bicep) and derives its claim lease from it.
@description('Message lock of the intake queue, in seconds.')
@minValue(5)
@maxValue(300)
param requestLockSeconds int = 300

resource namespace 'Microsoft.ServiceBus/namespaces@2024-01-01' = {
  name: name
  location: location
  tags: tags
  sku: {
    name: 'Standard'
    tier: 'Standard'
  }
  properties: {
    disableLocalAuth: true
    minimumTlsVersion: '1.2'
    publicNetworkAccess: 'Enabled'
  }
}

// At-least-once intake: ten deliveries, then the dead-letter queue; duplicate detection drops a
// re-sent request id within ten minutes; the lock covers the intake's worst case with renewal.
resource requests 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: 'training-requests'
  properties: {
    maxDeliveryCount: 10
    lockDuration: 'PT${requestLockSeconds}S'
    deadLetteringOnMessageExpiration: true
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    defaultMessageTimeToLive: 'P14D'
    maxSizeInMegabytes: 1024
  }
}

// Requests that can never run, kept with their reason for a person (the intake completes the
// original; see shared/adapters/broker/servicebus.py for why this is a queue and not a dead letter).
resource rejected 'Microsoft.ServiceBus/namespaces/queues@2024-01-01' = {
  parent: namespace
  name: 'training-rejected'
  properties: {
    maxDeliveryCount: 10
    lockDuration: 'PT1M'
    deadLetteringOnMessageExpiration: true
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    defaultMessageTimeToLive: 'P30D'
    maxSizeInMegabytes: 1024
  }
}

resource completed 'Microsoft.ServiceBus/namespaces/topics@2024-01-01' = {
  parent: namespace
  name: 'training-completed'
  properties: {
    requiresDuplicateDetection: true
    duplicateDetectionHistoryTimeWindow: 'PT10M'
    defaultMessageTimeToLive: 'P14D'
    maxSizeInMegabytes: 1024
  }
}

resource notifier 'Microsoft.ServiceBus/namespaces/topics/subscriptions@2024-01-01' = {
  parent: completed
  name: 'notifier'
  properties: {
    maxDeliveryCount: 10
    lockDuration: 'PT5M'
    deadLetteringOnMessageExpiration: true
    defaultMessageTimeToLive: 'P14D'
  }
}

output name string = namespace.name
output fullyQualifiedNamespace string = '${namespace.name}.servicebus.windows.net'
output requestsQueueName string = requests.name
output requestLockSeconds int = requestLockSeconds
output completedTopicName string = completed.name
output notifierSubscriptionName string = notifier.name
