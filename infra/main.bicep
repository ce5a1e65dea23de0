// rlq in Azure: Service Bus, the function app (Flex Consumption, VNet-integrated, managed
// identity), its storage (run table), Azure ML (workspace, Key Vault, container registry,
// clusters in the VNet), monitoring, and the role assignments that let each identity do its
// job — nothing more.
//
//   az deployment group create -g <rg> -f infra/main.bicep -p @infra/main.parameters.json
//
// See docs/azure.md for the settings and the publish step.

targetScope = 'resourceGroup'

@description('Short lowercase name prefix (2-8 letters/digits) for every resource.')
@minLength(2)
@maxLength(8)
param prefix string

@description('Azure region (a Flex Consumption region with the GPU family you ask for).')
param location string = resourceGroup().location

@description('VNet address space and subnets.')
param vnetAddressPrefix string = '10.20.0.0/16'
param functionsSubnetPrefix string = '10.20.0.0/24'
param amlSubnetPrefix string = '10.20.1.0/24'

@description('Public IP ranges (CIDR) allowed through the storage and Key Vault firewalls, e.g. your workstation for `func publish` checks.')
param allowedIpRanges array = []

@description('Create the default clusters with the workspace.')
param createClusters bool = true

@description('Let the app create clusters that requests name (grants AzureML Compute Operator + subnet join).')
param allowClusterCreation bool = true

@description('Give the clusters\' nodes public IPs (Azure ML then reaches them inbound on TCP 44224). Default: no public IP, the current Azure ML VNet guidance.')
param amlNodePublicIp bool = false

@description('Also open (and check) the seed\'s inbound TCP 29876-29877 from BatchNodeManagement (older Azure ML guidance).')
param amlBatchNodeManagementInbound bool = false

@description('Ray head cluster (GPU). STANDARD_NC6 (the article\'s) is retired; a T4 node is the small GPU today.')
param headClusterName string = 'head-gpu'
param headVmSize string = 'Standard_NC4as_T4_v3'
param headMaxNodes int = 1

@description('Ray worker cluster (CPU) and how many nodes a run uses.')
param workerClusterName string = 'worker-cpu'
param workerVmSize string = 'Standard_D2as_v5'
param workerMaxNodes int = 4
@description('Worker nodes for a request that names no worker cluster; 0 (the default) runs such a request as one job on the head cluster. The worker cluster is created either way, for requests that name it (the seed does).')
param workerNodeCount int = 0

@description('NCRONTAB (6 fields) of the poller.')
param pollSchedule string = '*/10 * * * * *'

@description('Global cap on runs in flight (protects the bill).')
param maxInFlight int = 4

@description('Default and maximum run duration, seconds.')
param defaultRunDurationS int = 3600
param maxRunDurationS int = 14400

@description('Endpoints every run notifies (space separated https URLs); empty: none.')
param webhookUrls string = ''

@description('Webhook signing secrets (whsec_..., space separated); stored in Key Vault.')
@secure()
param webhookSecrets string = ''

@description('Signs the dashboard\'s form tokens (RLQ_CSRF_SECRET), one key for every instance of the app (at least 32 characters; e.g. -p csrfSecret="$(openssl rand -hex 32)"); stored in Key Vault.')
@secure()
@minLength(32)
param csrfSecret string

@description('Ray token of the SDK v2 backend\'s clusters (at least 32 characters; e.g. -p rayAuthToken="$(openssl rand -hex 32)"); stored in the workspace Key Vault, read by the nodes with their managed identity.')
@secure()
@minLength(32)
param rayAuthToken string

@description('Container registry SKU (Premium: retention, zone redundancy).')
@allowed([
  'Basic'
  'Standard'
  'Premium'
])
param registrySku string = 'Premium'

@description('Tags for every resource.')
param tags object = {
  workload: 'rlq'
}

var p = toLower(prefix)
var suffix = uniqueString(resourceGroup().id, p)
var names = {
  vnet: '${p}-vnet'
  serviceBus: '${p}-sb-${suffix}'
  storage: take('${p}st${suffix}', 24)
  mlStorage: take('${p}ml${suffix}', 24)
  keyVault: take('${p}-kv-${suffix}', 24)
  registry: take('${p}acr${suffix}', 50)
  workspace: '${p}-mlw'
  plan: '${p}-plan'
  functionApp: '${p}-func-${suffix}'
  runTable: 'rlqruns'
}

module network 'modules/network.bicep' = {
  name: 'network'
  params: {
    location: location
    vnetName: names.vnet
    addressPrefix: vnetAddressPrefix
    functionsSubnetPrefix: functionsSubnetPrefix
    amlSubnetPrefix: amlSubnetPrefix
    nodePublicIp: amlNodePublicIp
    batchNodeManagementInbound: amlBatchNodeManagementInbound
    tags: tags
  }
}

module serviceBus 'modules/servicebus.bicep' = {
  name: 'servicebus'
  params: {
    location: location
    name: names.serviceBus
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  params: {
    location: location
    prefix: p
    tags: tags
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage'
  params: {
    location: location
    name: names.storage
    tableName: names.runTable
    allowedSubnetIds: [
      network.outputs.functionsSubnetId
    ]
    allowedIpRanges: allowedIpRanges
    tags: tags
  }
}

module registry 'modules/registry.bicep' = {
  name: 'registry'
  params: {
    location: location
    name: names.registry
    sku: registrySku
    tags: tags
  }
}

module aml 'modules/aml.bicep' = {
  name: 'aml'
  params: {
    location: location
    workspaceName: names.workspace
    keyVaultName: names.keyVault
    storageName: names.mlStorage
    appInsightsId: monitoring.outputs.appInsightsId
    amlSubnetId: network.outputs.amlSubnetId
    vnetId: network.outputs.vnetId
    nodePublicIp: amlNodePublicIp
    allowedSubnetIds: [
      network.outputs.functionsSubnetId
      network.outputs.amlSubnetId
    ]
    allowedIpRanges: allowedIpRanges
    createClusters: createClusters
    headClusterName: headClusterName
    headVmSize: headVmSize
    headMaxNodes: headMaxNodes
    workerClusterName: workerClusterName
    workerVmSize: workerVmSize
    workerMaxNodes: workerMaxNodes
    webhookSecrets: webhookSecrets
    csrfSecret: csrfSecret
    rayAuthToken: rayAuthToken
    containerRegistryId: registry.outputs.id
    tags: tags
  }
}

var rlqSettings = {
  // the Service Bus triggers (identity-based connection)
  ServiceBusConnection__fullyQualifiedNamespace: serviceBus.outputs.fullyQualifiedNamespace
  // rlq (shared/settings.py)
  RLQ_LOCAL_MODE: 'false'
  RLQ_DATA_DIR: '/tmp/rlq'
  RLQ_BACKEND: 'azureml'
  RLQ_STORE: 'table'
  RLQ_BROKER: 'servicebus'
  // the intake queue's lock: the claim lease derives from it (shared/settings.py claim_lease_s)
  RLQ_LOCK_DURATION_S: string(serviceBus.outputs.requestLockSeconds)
  RLQ_POLL_SCHEDULE: pollSchedule
  RLQ_PUBLIC_BASE_URL: 'https://${names.functionApp}.azurewebsites.net'
  RLQ_SERVICEBUS_NAMESPACE: serviceBus.outputs.fullyQualifiedNamespace
  RLQ_REJECTED_QUEUE_NAME: 'training-rejected'
  RLQ_TABLE_ACCOUNT_URL: storage.outputs.tableEndpoint
  RLQ_TABLE_NAME: names.runTable
  RLQ_AZUREML_SUBSCRIPTION_ID: subscription().subscriptionId
  RLQ_AZUREML_RESOURCE_GROUP: resourceGroup().name
  RLQ_AZUREML_WORKSPACE: aml.outputs.workspaceName
  RLQ_AZUREML_KEY_VAULT_URI: aml.outputs.keyVaultUri
  RLQ_AZUREML_RAY_TOKEN_SECRET: aml.outputs.rayTokenSecretName
  RLQ_AZUREML_VNET: network.outputs.vnetName
  RLQ_AZUREML_SUBNET: 'aml'
  RLQ_AZUREML_VNET_RESOURCE_GROUP: resourceGroup().name
  RLQ_AZUREML_NSG_CHECK: 'enforce'
  RLQ_AZUREML_NODE_PUBLIC_IP: string(amlNodePublicIp)
  RLQ_AZUREML_NSG_BATCH_INBOUND: string(amlBatchNodeManagementInbound)
  RLQ_HEAD_CLUSTER: headClusterName
  RLQ_HEAD_VM_SIZE: toUpper(headVmSize)
  RLQ_HEAD_MIN_NODES: '0'
  RLQ_HEAD_MAX_NODES: string(headMaxNodes)
  RLQ_WORKER_CLUSTER: workerClusterName
  RLQ_WORKER_VM_SIZE: toUpper(workerVmSize)
  RLQ_WORKER_MIN_NODES: '0'
  RLQ_WORKER_MAX_NODES: string(workerMaxNodes)
  RLQ_WORKER_NODE_COUNT: string(workerNodeCount)
  RLQ_MAX_IN_FLIGHT: string(maxInFlight)
  RLQ_DEFAULT_RUN_DURATION_S: string(defaultRunDurationS)
  RLQ_MAX_RUN_DURATION_S: string(maxRunDurationS)
  RLQ_WEBHOOK_URLS: webhookUrls
}

// Key Vault references: each instance reads the same values (data_dir is per instance in Azure).
var csrfSettings = {
  RLQ_CSRF_SECRET: '@Microsoft.KeyVault(VaultName=${aml.outputs.keyVaultName};SecretName=${aml.outputs.csrfSecretName})'
}

var secretSettings = empty(webhookSecrets) ? {} : {
  RLQ_WEBHOOK_SECRETS: '@Microsoft.KeyVault(VaultName=${aml.outputs.keyVaultName};SecretName=${aml.outputs.webhookSecretName})'
}

module functionApp 'modules/functionapp.bicep' = {
  name: 'functionapp'
  params: {
    location: location
    name: names.functionApp
    planName: names.plan
    subnetId: network.outputs.functionsSubnetId
    storageName: storage.outputs.name
    storageBlobEndpoint: storage.outputs.blobEndpoint
    deploymentContainerName: storage.outputs.deploymentContainerName
    appInsightsConnectionString: monitoring.outputs.connectionString
    appSettings: union(rlqSettings, csrfSettings, secretSettings)
    tags: tags
  }
}

module roles 'modules/roles.bicep' = {
  name: 'roles'
  params: {
    principalId: functionApp.outputs.principalId
    serviceBusName: serviceBus.outputs.name
    requestsQueueName: serviceBus.outputs.requestsQueueName
    completedTopicName: serviceBus.outputs.completedTopicName
    notifierSubscriptionName: serviceBus.outputs.notifierSubscriptionName
    storageName: storage.outputs.name
    workspaceName: aml.outputs.workspaceName
    keyVaultName: aml.outputs.keyVaultName
    appInsightsName: monitoring.outputs.appInsightsName
    vnetName: network.outputs.vnetName
    amlNsgName: network.outputs.amlNsgName
    allowClusterCreation: allowClusterCreation
    registryName: registry.outputs.name
    workspacePrincipalId: aml.outputs.workspacePrincipalId
  }
}

output functionAppName string = functionApp.outputs.name
output functionAppHost string = functionApp.outputs.defaultHostName
output serviceBusNamespace string = serviceBus.outputs.fullyQualifiedNamespace
output tableAccountUrl string = storage.outputs.tableEndpoint
output workspaceName string = aml.outputs.workspaceName
output vnetName string = network.outputs.vnetName
output registryLoginServer string = registry.outputs.loginServer
